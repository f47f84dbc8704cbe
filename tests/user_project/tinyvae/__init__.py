"""A user's own small project: a VAE in plain Lightning that uses klexp as a plugin only."""
