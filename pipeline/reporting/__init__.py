"""What the pipeline tells you: plans and cost estimates, progress, run reports, status, search."""
