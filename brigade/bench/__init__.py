"""``brigade bench``: figures a user can reproduce, printed as ratios with their absolute values."""
