"""`python -m extend VERB [arguments]` is the `extend` command: see `python -m extend --help`."""

from extend.commands import main

if __name__ == "__main__":
    main()
