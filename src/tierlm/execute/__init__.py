"""Carrying plans out: the executor, its retry policy, circuit breakers and stream handling."""

from tierlm.execute.breaker import BreakerBoard, BreakerConfig, BreakerState, CircuitBreaker
from tierlm.execute.executor import ExecutionHooks, Executor, RoutedStream
from tierlm.execute.retry import RetryPolicy

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
