"""One LightningModule per experiment; each returns named outputs for the KL terms."""
