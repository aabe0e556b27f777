"""Pipeline execution: step handlers, the runner and the state passed between steps."""
