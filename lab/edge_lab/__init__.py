"""The lab: simulated Mac minis on one Linux machine."""
