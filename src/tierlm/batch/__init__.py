"""Deferred work: the OpenAI Batch API's jobs (:mod:`~tierlm.batch.store`), the conditions of
their window (:mod:`~tierlm.batch.window`) and the scheduler that runs them inside it
(:mod:`~tierlm.batch.scheduler`); the HTTP routes are :mod:`tierlm.server.batches`."""
