"""Deployments of the sweep flow."""
