"""fanout: a parallelism advisor for workflow engines."""

__all__: list[str] = []
