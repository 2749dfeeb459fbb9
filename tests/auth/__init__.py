"""Tests of cluster.auth."""
