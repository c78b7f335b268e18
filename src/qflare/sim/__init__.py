"""Simulation harnesses: in-memory cohorts and federated-learning simulations."""
