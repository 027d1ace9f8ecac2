"""`python -m data_prep recipe=NAME [overrides]`: the offline data-preparation step (see extend.data)."""
