"""The optimizer race: which optimizer, at what cost, on a few small workloads.

    python -m benchmarks.race --workload shakespeare --optimizers adamw,muon \\
        --seeds 3 --json race.json [--quick] [--report docs/race.md]

``workloads`` defines the models and data, ``contenders`` the optimizers,
``runner`` the learning-rate sweep, the seeds and the statistics, and
``report`` the leaderboard and plots drawn from the JSON.
"""
