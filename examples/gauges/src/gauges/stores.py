"""The app's declaration: which stores it has."""

from storekeeper import App, Store

from .model import Base

app = App(
    "gauges",
    stores=[
        Store(
            "stream_db",
            description="Stream gages and their readings",
            metadata=Base.metadata,
            initializer="gauges.model:init_stream_db",
            required=True,
        )
    ],
)
