"""Shared pytest setup: a hypothesis profile that keeps property tests quick on 2 cores."""

from hypothesis import HealthCheck, settings

# No per-example deadline: the machine is shared and timing noise must not fail tests.
settings.register_profile(
    "qpack", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("qpack")
