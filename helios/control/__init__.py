"""The control plane: users, roles, tokens and settings, sealed at rest."""
