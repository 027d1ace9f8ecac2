#!/usr/bin/env bash
# Launch extend/train.py on one node, several nodes, or a SLURM allocation, through torchrun
# (torch.distributed.run). Everything after the options (or after `--`) goes to the training script.
#
#   ./launch.sh --processes 8 recipe=giraffe_16k accelerate=zero3                 # one node, 8 processes
#   ./launch.sh --nodes 2 --node-rank 0 --processes 16 --main-addr 10.0.0.1 recipe=...   # on node 0
#   ./launch.sh --nodes 2 --node-rank 1 --processes 16 --main-addr 10.0.0.1 recipe=...   # on node 1
#   sbatch --nodes 4 --ntasks-per-node 1 --wrap "./launch.sh --slurm --processes 32 recipe=..."
#   ./launch.sh --dry-run ...                                                    # print, run nothing
#
# Before any process starts, the overrides are checked once (`python -m extend.train --check --processes N ...`: compose and
# validate, write nothing): a bad config prints its problems once, one per line, and launch.sh exits with the
# check's code (2) instead of starting torchrun. Only for the default --script; --dry-run checks nothing.
#
# Options (environment variables in brackets are read when the option is not given):
#   --processes N    processes in total, over all nodes [default: GPUs on this node, else 1]
#   --nodes N        number of nodes [NNODES; under --slurm SLURM_NNODES; default 1]
#   --node-rank R    this node's rank, 0..nodes-1 [NODE_RANK; default 0]
#   --main-addr A    address of node 0, required with several nodes [MAIN_ADDR, MASTER_ADDR; under
#                    --slurm the first host of SLURM_JOB_NODELIST]
#   --main-port P    port on node 0 [MAIN_PORT, MASTER_PORT; default 29500]
#   --slurm          one srun task per node; torchrun on each node joins a c10d rendezvous, and node
#                    ranks come from SLURM's variables evaluated on that node (never from the first node).
#                    With --dry-run outside an allocation (a login node) it prints the command each node
#                    will run, with <placeholders> for what the allocation decides (--nodes, --main-addr
#                    fill them in)
#   --script PATH    the training script [default: extend/train.py]
#   --dry-run        print the exact command for each node and exit
# PYTHON picks the interpreter [default: python3].
set -euo pipefail

die() { echo "launch.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

processes="" nodes="${NNODES:-}" node_rank="${NODE_RANK:-0}"
main_addr="${MAIN_ADDR:-${MASTER_ADDR:-}}" main_port="${MAIN_PORT:-${MASTER_PORT:-29500}}"
slurm=0 dry_run=0 script="extend/train.py" python="${PYTHON:-python3}" login_node=0
while (($#)); do
  case "$1" in
    --processes) processes="${2:?--processes needs a number}"; shift 2 ;;
    --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
    --node-rank) node_rank="${2:?--node-rank needs a number}"; shift 2 ;;
    --main-addr) main_addr="${2:?--main-addr needs a host}"; shift 2 ;;
    --main-port) main_port="${2:?--main-port needs a port}"; shift 2 ;;
    --script) script="${2:?--script needs a path}"; shift 2 ;;
    --slurm) slurm=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    --*) die "unknown option $1 (see ./launch.sh --help)" ;;
    *) break ;;
  esac
done

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

if ((slurm)) && [[ -z "${SLURM_JOB_ID:-}" ]]; then
  ((dry_run)) || die "--slurm needs a SLURM allocation (SLURM_JOB_ID is not set): run it inside sbatch or salloc (--dry-run shows the per-node command from here)"
  login_node=1
fi
if ((slurm && login_node)); then
  # What each node will run, shown before the allocation exists: unknowns stay placeholders.
  nodes="${nodes:-${SLURM_NNODES:-}}"
  main_addr="${main_addr:-<node-0-host>}"
  placeholders=""
  [[ -n "$nodes" ]] || { nodes="<nodes>"; placeholders+=" --nodes"; }
  [[ "$main_addr" != "<node-0-host>" ]] || placeholders+=" --main-addr"
elif ((slurm)); then
  nodes="${nodes:-${SLURM_NNODES:-}}"
  [[ -n "$nodes" ]] || die "--slurm: SLURM_NNODES is not set; pass --nodes"
  if [[ -z "$main_addr" ]]; then
    command -v scontrol >/dev/null || die "--slurm: scontrol not found to resolve node 0's address; pass --main-addr"
    main_addr="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" | head -n 1)"
  fi
fi
nodes="${nodes:-1}"
[[ -z "$processes" ]] || is_count "$processes" || die "--processes must be a positive whole number, got '$processes'"
[[ "$nodes" == "<nodes>" ]] || is_count "$nodes" || die "--nodes must be a positive whole number, got '$nodes'"
[[ "$node_rank" =~ ^[0-9]+$ ]] || die "--node-rank must be a whole number, got '$node_rank'"
[[ "$main_port" =~ ^[0-9]+$ ]] && ((main_port > 0 && main_port < 65536)) || die "--main-port must be a port number, got '$main_port'"
[[ -f "$script" ]] || die "training script $script not found (run from the repository root or pass --script)"
if ((login_node)); then
  # A login node's GPUs say nothing about the compute nodes': without --processes each node runs one per GPU.
  if [[ -z "$processes" ]]; then
    per_node="<GPUs per node>"; placeholders+=" --processes"
  elif [[ "$nodes" == "<nodes>" ]]; then
    per_node="<$processes / nodes>"
  else
    ((processes % nodes == 0)) || die "--processes $processes does not divide evenly over --nodes $nodes; use a multiple of $nodes"
    per_node=$((processes / nodes))
  fi
else
  if [[ -z "$processes" ]]; then
    gpus="$(command -v nvidia-smi >/dev/null && nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)"
    processes=$(( (gpus > 0 ? gpus : 1) * nodes ))
  fi
  ((processes % nodes == 0)) || die "--processes $processes does not divide evenly over --nodes $nodes; use a multiple of $nodes"
  ((node_rank < nodes)) || die "--node-rank $node_rank is out of range for --nodes $nodes (0..$((nodes - 1)))"
  if ((nodes > 1)) && [[ -z "$main_addr" ]]; then
    die "--nodes $nodes needs node 0's address: pass --main-addr (or set MAIN_ADDR)"
  fi
  per_node=$((processes / nodes))
fi

quoted_args=""
for arg in "$@"; do quoted_args+=" $(printf '%q' "$arg")"; done
run="$python -m torch.distributed.run --nproc-per-node $per_node"

node_command() {  # the torchrun line for node $1 (static rendezvous on node 0's address)
  echo "$run --nnodes $nodes --node-rank $1 --master-addr $main_addr --master-port $main_port $script$quoted_args"
}

if ((slurm)); then
  [[ "$quoted_args" != *"'"* ]] || die "--slurm: arguments with single quotes cannot pass through srun's bash -c; drop them"
  # Single quotes: SLURM_NODEID and SLURM_JOB_ID expand inside each node's task, not here.
  inner="exec $run --nnodes $nodes --node-rank \$SLURM_NODEID --rdzv-backend c10d --rdzv-endpoint $main_addr:$main_port --rdzv-id \$SLURM_JOB_ID $script$quoted_args"
  line="srun --nodes $nodes --ntasks-per-node 1 --kill-on-bad-exit=1 bash -c '$inner'"
elif ((nodes == 1)); then
  line="$run --standalone --nnodes 1 $script$quoted_args"
else
  line="$(node_command "$node_rank")"
fi

if ((dry_run)); then
  if ((login_node)); then
    echo "$line"
    note="outside a SLURM allocation: \$SLURM_NODEID and \$SLURM_JOB_ID expand on each node"
    flags="${placeholders# }"
    [[ -z "$flags" ]] || note+="; <placeholders> are what the allocation decides (${flags// /, } fill them in)"
    echo "launch.sh: $note" >&2
  elif ((slurm || nodes == 1)); then
    echo "$line"
  else
    for ((rank = 0; rank < nodes; rank++)); do echo "node $rank: $(node_command "$rank")"; done
  fi
  exit 0
fi
if [[ "$script" == "extend/train.py" ]]; then
  # Validate once, here, before any process starts: a bad config then prints one line per problem
  # instead of once per process under torchrun's warnings and its ChildFailedError traceback.
  checked=0
  # --processes: the whole job's count, so the checks that depend on it (micro-batch split, sequence
  # parallelism, DeepSpeed's need for a launcher) see the launch about to happen, not this process.
  $python -m extend.train --check --processes "$processes" "$@" || checked=$?
  ((checked == 0)) || exit "$checked"
fi
eval "exec $line"
