"""Flask extensions, created unbound; create_app() binds them."""
from __future__ import annotations

from flask_htmx import HTMX
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()
htmx = HTMX()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


class RedisQueues:
    """Redis connection and RQ queues for the bound app (created lazily, never at import)."""

    def __init__(self) -> None:
        self.app = None

    def init_app(self, app) -> None:
        self.app = app
        app.extensions["rq"] = self

    @property
    def connection(self):
        from flask import current_app
        from redis import Redis

        app = current_app._get_current_object()
        conn = app.extensions.get("redis_connection")
        if conn is None:
            conn = Redis.from_url(app.config["REDIS_URL"], socket_connect_timeout=5, health_check_interval=30)
            app.extensions["redis_connection"] = conn
        return conn

    def queue(self, name: str = "default"):
        from rq import Queue

        return Queue(name, connection=self.connection)


rq = RedisQueues()
