"""Peers diskledger is measured against, side by side (see README.md here).

The scripts run standalone, each in its own interpreter (Nova's under var/nova-venv, made by
scripts/nova-venv.sh); ``benchmarks/nova.py`` imports ``nova_vs_diskledger`` for its ``measure``.
"""
