"""Carrying plans out: the executor, its retry policy, circuit breakers and stream handling."""

from tierlm.execute.breaker import BreakerBoard, BreakerConfig, BreakerState, CircuitBreaker
from tierlm.execute.executor import ExecutionHooks, Executor
from tierlm.execute.retry import RetryPolicy
from tierlm.execute.streams import RoutedStream

__all__ = [
    "BreakerBoard",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "ExecutionHooks",
    "Executor",
    "RetryPolicy",
    "RoutedStream",
]
