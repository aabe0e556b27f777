"""The backend-neutral channel graph: which channels of which tensors must be pruned together."""
