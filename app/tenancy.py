"""Tenant isolation in one place: every ORM query in a tenant admin's request is scoped to their tenant.

enforce_access() stores the signed-in tenant admin's tenant id in g.scope_tenant_id; this listener adds a
WHERE tenant_id = :id to every SELECT touching a TenantScoped model (and tenants.id for Tenant itself), so a
view that forgets to filter still cannot read another tenant's rows. Background jobs and root admins run
unscoped. Pass execution_options(skip_tenant_scope=True) only for authentication look-ups.
"""
from __future__ import annotations

from flask import Flask, g, has_request_context
from sqlalchemy import event
from sqlalchemy.orm import Session, with_loader_criteria

from app.models import Tenant, TenantScoped


def current_scope() -> int | None:
    """The tenant id the current request is confined to, or None when unscoped."""
    if not has_request_context():
        return None
    return g.get("scope_tenant_id")


def _scope(execute_state) -> None:
    if not execute_state.is_select or execute_state.execution_options.get("skip_tenant_scope"):
        return
    tenant_id = current_scope()
    if tenant_id is None:
        return
    options = [with_loader_criteria(cls, cls.tenant_id == tenant_id, include_aliases=True)
               for cls in _scoped_models()]
    options.append(with_loader_criteria(Tenant, Tenant.id == tenant_id, include_aliases=True))
    execute_state.statement = execute_state.statement.options(*options)


def _scoped_models() -> list[type]:
    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return [c for c in walk(TenantScoped) if hasattr(c, "__table__")]


def init_app(app: Flask) -> None:
    if not event.contains(Session, "do_orm_execute", _scope):
        event.listen(Session, "do_orm_execute", _scope)
