"""The gateway's database access: the job, template and audit records the routes and job
submission read and write.

Visibility is decided here: a key sees its own jobs and templates, an ``admin`` key sees all;
anything else answers 404, the same as a row that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import AuditRecord, Job, JobState, Template, session_factory, utcnow
from gateway.auth import Principal
from gateway.problems import Problem

# ---- jobs ---------------------------------------------------------------------------------------


def visible_job(db: Session, job_id: str, principal: Principal) -> Job:
    job = db.get(Job, job_id)
    if job is None or not (principal.is_admin or job.api_key_id == principal.id):
        raise Problem(404, "Job not found", f"no job with id {job_id}", kind="job-not-found")
    return job


def list_jobs(db: Session, principal: Principal, state: str | None, kind: str | None, limit: int,
              offset: int) -> tuple[Sequence[Job], int]:
    """A page of the jobs this key sees, newest first, and how many match in all."""
    query = select(Job)
    if not principal.is_admin:
        query = query.where(Job.api_key_id == principal.id)
    if state is not None:
        query = query.where(Job.state == state)
    if kind is not None:
        query = query.where(Job.kind == kind)
    count = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    jobs = db.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return jobs, count


def cancel_job(db: Session, job_id: str, principal: Principal) -> Job:
    """Mark a queued or running job cancelled (again: no change); 409 when it already finished."""
    job = visible_job(db, job_id, principal)
    if job.state in (JobState.SUCCEEDED, JobState.FAILED):
        raise Problem(409, "Job already finished", f"job {job_id} already {job.state}; nothing to cancel",
                      kind="job-finished", state=job.state)
    if job.state != JobState.CANCELLED:
        job.state, job.stage, job.finished_at = JobState.CANCELLED, "cancelled", utcnow()
        db.commit()
    return job


def job_counts() -> dict[str, Any]:
    """``{state: number of jobs}`` (the ``medstack_jobs`` gauge)."""
    with session_factory()() as db:
        return dict(db.execute(select(Job.state, func.count()).group_by(Job.state)).tuples().all())


def job_by_idempotency_key(scoped_key: str) -> Job | None:
    with session_factory()() as db:
        return db.scalars(select(Job).where(Job.idempotency_key == scoped_key)).first()


def insert_job(job: Job) -> Job | None:
    """Insert; None when another request took the idempotency key first."""
    with session_factory()() as db:
        db.add(job)
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
            return None
    return job


def delete_job(job_id: str) -> None:
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is not None:
            db.delete(job)


def database_ok() -> bool:
    try:
        with session_factory()() as db:
            db.execute(text("SELECT 1"))
        return True
    except Exception:  # any driver error means not ready
        return False


# ---- templates ----------------------------------------------------------------------------------

MAX_SHOTS = 10


def visible_template(db: Session, template_id: str, principal: Principal) -> Template:
    template = db.get(Template, template_id)
    if template is None or not (principal.is_admin or template.api_key_id == principal.id):
        raise Problem(404, "Template not found", f"no template with id {template_id}", kind="template-not-found")
    return template


def list_templates(db: Session, principal: Principal) -> Sequence[Template]:
    query = select(Template).order_by(Template.created_at.desc())
    if not principal.is_admin:
        query = query.where(Template.api_key_id == principal.id)
    return db.scalars(query.limit(500)).all()


def delete_template(db: Session, template_id: str, principal: Principal) -> None:
    db.delete(visible_template(db, template_id, principal))
    db.commit()


def check_templates(db: Session, principal: Principal, template_ids: list[str], structures: list[str]) -> None:
    """Refuse at submission what the worker would refuse later: unknown or foreign templates (404),
    too many, or templates without points for a requested structure (422; MedLAM needs every
    structure in every template)."""
    if not template_ids or not structures:
        raise Problem(422, "Invalid request", "name at least one structure and one template", kind="validation-error")
    if len(set(template_ids)) > MAX_SHOTS:
        raise Problem(422, "Invalid request", f"at most {MAX_SHOTS} templates per job", kind="validation-error")
    for template_id in dict.fromkeys(template_ids):
        template = visible_template(db, template_id, principal)
        missing = [s for s in structures if s not in template.params.get("structures", {})]
        if missing:
            raise Problem(422, "Structure not in template", f"template {template_id} has no points for "
                          f"{', '.join(missing)}; use templates that annotate every requested structure",
                          kind="structure-not-in-template", template_id=template_id, missing=missing)


# ---- audit --------------------------------------------------------------------------------------


def audit_records(db: Session, api_key_id: str | None, job_id: str | None, since: datetime | None,
                  limit: int) -> Sequence[AuditRecord]:
    """Audit records matching the filters, newest first."""
    query = select(AuditRecord)
    if api_key_id is not None:
        query = query.where(AuditRecord.api_key_id == api_key_id)
    if job_id is not None:
        query = query.where(AuditRecord.job_id == job_id)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    return db.scalars(query.order_by(AuditRecord.id.desc()).limit(limit)).all()
