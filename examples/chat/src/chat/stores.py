"""The chat app's declaration: two stores."""

from storekeeper import App, Store

from .model import ChatBase, GameBase, init_chat_db, init_scores_db

app = App(
    "chat",
    stores=[
        Store(
            "chat_db",
            description="Users, channels, messages",
            metadata=ChatBase.metadata,
            initializer=init_chat_db,
        ),
        Store(
            "scores_db",
            description="Games and scores",
            metadata=GameBase.metadata,
            initializer=init_scores_db,
        ),
    ],
)
