"""The essays' experiments: synthetic probes of memory, and cells compared side by side over seeds."""
