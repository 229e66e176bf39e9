"""The capability registry: one table of what MedStack can do and what each capability needs.

Each row names the job kind written to the job table, the Celery task the gateway submits and the
queue it goes to, the Triton models it needs, the API-key scope, and the route prefix. The Celery
app (task routes, included task modules), the gateway's 503 ``model-missing`` /
``worker-task-missing`` checks, ``/readyz``, ``GET /v1/models`` grouping and the capability table
of ``docs/api.md`` are all derived from it. Adding a capability: ``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.keys import Scope

VOLUMES_QUEUE = "volumes"  # long 3-D jobs, one at a time per worker
BATCH_QUEUE = "batch"  # dataset scoring, kept apart so it never delays a volume


@dataclass(frozen=True)
class Capability:
    """One thing a client can ask for, and what must be deployed for it to work.

    ``models``: every Triton model the capability calls. ``model_choices``: alternatives of which
    one served model is enough, first preferred (segmentation serves PCT-Net, else the reference).
    ``task``: the Celery task name (``"<module>.<function>"``); None for synchronous capabilities.
    """

    name: str
    scope: Scope
    route_prefix: str
    summary: str
    job_kind: str | None = None
    task: str | None = None
    queue: str | None = None
    models: tuple[str, ...] = ()
    model_choices: tuple[str, ...] = ()

    @property
    def task_module(self) -> str | None:
        return self.task.rsplit(".", 1)[0] if self.task else None

    @property
    def all_models(self) -> tuple[str, ...]:
        return self.models + self.model_choices

    @property
    def model(self) -> str | None:
        """The model the capability exists for, recorded on its jobs: the last of ``models``, which are
        listed in the order they are called (MedLSAM: MedLAM's boxes, then the MedLSAM segmenter). None
        where the client picks among ``model_choices`` or no Triton model is called."""
        return self.models[-1] if self.models else None


SEGMENTATION = Capability(
    "segmentation", Scope.SEGMENTATION, "/v1/segmentation", "whole-volume CT segmentation (PCT-Net)",
    job_kind="segmentation", task="workers.segmentation_tasks.segment_volume", queue=VOLUMES_QUEUE,
    model_choices=("segmentation_pctnet", "reference_hutissue"),
)
LOCALIZATION_TEMPLATES = Capability(
    "localization templates", Scope.LOCALIZATION, "/v1/localization/templates",
    "register a labelled template volume for few-shot localization (MedLAM)",
    job_kind="localization_template", task="workers.localization_tasks.embed_template", queue=VOLUMES_QUEUE,
    models=("localization_medlam",),
)
LOCALIZATION = Capability(
    "localization", Scope.LOCALIZATION, "/v1/localization", "few-shot organ boxes from templates (MedLAM)",
    job_kind="localization", task="workers.localization_tasks.localize", queue=VOLUMES_QUEUE,
    models=("localization_medlam",),
)
MEDLSAM = Capability(
    "medlsam", Scope.SEGMENTATION, "/v1/medlsam", "organ masks from MedLAM boxes (MedLSAM)",
    job_kind="medlsam", task="workers.localization_tasks.medlsam_segment", queue=VOLUMES_QUEUE,
    models=("localization_medlam", "segmentation_medlsam"),
)
REPORT = Capability(
    "report", Scope.REPORT, "/v1/reports", "chest X-ray report generation (KiUT)",
    models=("report_generate",),
)
DIALOGUE = Capability(
    "dialogue", Scope.DIALOGUE, "/v1/dialogue", "consultation dialogue with streaming (InsMed/MidMed)",
    models=("dialogue_generate",),
)
VALUATION = Capability(
    "valuation", Scope.VALUATION, "/v1/valuation", "training-data valuation and coresets (SI, gradient norm)",
    job_kind="valuation", task="workers.valuation_tasks.score_dataset", queue=BATCH_QUEUE,
)
# weak supervision (issue #20): a brain segmenter trained from slice-level labels, and the pseudo-label
# workflow itself as a service; both under the segmentation scope, since both return masks of an image
UMCAM = Capability(
    "umcam", Scope.SEGMENTATION, "/v1/umcam", "whole-volume brain extraction on T1 MR, U-Net trained on "
    "UM-CAM + GSE pseudo-labels", job_kind="umcam", task="workers.umcam_tasks.extract_brain", queue=VOLUMES_QUEUE,
    models=("umcam_unet",),
)
UMCAM_PSEUDO_LABELS = Capability(
    "umcam pseudo-labels", Scope.SEGMENTATION, "/v1/umcam/pseudo-labels",
    "UM-CAM maps and GSE pseudo-label masks from slice-level labels", job_kind="umcam_pseudo_labels",
    task="workers.umcam_tasks.pseudo_labels", queue=VOLUMES_QUEUE, models=("umcam_cam",),
)
# universal segmentation (issue #21): one Hermes-R network, the request names the tasks (structures) and
# the modality; masks of an image, so the segmentation scope
HERMES = Capability(
    "hermes", Scope.SEGMENTATION, "/v1/hermes", "universal segmentation of the requested tasks (CT organs, lung "
    "tumour, brain structures) with task and modality priors (Hermes-R)", job_kind="hermes",
    task="workers.hermes_tasks.segment_tasks", queue=VOLUMES_QUEUE, models=("hermes_r",),
)
# few-shot tasks (issue #22): the job adapts a head to a client's support set; prediction is synchronous
# (encoder on Triton, head in the gateway). One served encoder is enough; the request names which one.
# ``model_choices``: the Triton models of services.fewshot.encoders.ENCODERS
# (tests/unit/test_fewshot_service.py checks the two agree)
FEWSHOT = Capability(
    "fewshot", Scope.FEWSHOT, "/v1/fewshot", "few-shot classification tasks: a head adapted to labelled support "
    "images on a foundation encoder, predictions through Triton", job_kind="fewshot_adapt",
    task="workers.fewshot_tasks.adapt_task", queue=BATCH_QUEUE,
    model_choices=("fewshot_chest", "fewshot_chest_vlm", "fewshot_ct"),
)

CAPABILITIES: tuple[Capability, ...] = (
    SEGMENTATION, LOCALIZATION_TEMPLATES, LOCALIZATION, MEDLSAM, REPORT, DIALOGUE, VALUATION, UMCAM,
    UMCAM_PSEUDO_LABELS, HERMES, FEWSHOT,
)


def worker_task_modules() -> list[str]:
    """The modules a Celery worker imports: one ``<family>_tasks`` module per worker capability."""
    return sorted({c.task_module for c in CAPABILITIES if c.task_module})


def task_routes() -> dict[str, dict[str, str]]:
    return {c.task: {"queue": c.queue} for c in CAPABILITIES if c.task and c.queue}


def queues() -> list[str]:
    return sorted({c.queue for c in CAPABILITIES if c.queue})


def capabilities_of_model(model: str) -> list[str]:
    """Names of the capabilities that call ``model`` (for ``GET /v1/models`` grouping)."""
    return [c.name for c in CAPABILITIES if model in c.all_models]


def _code(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def markdown_table() -> str:
    """The capability table of ``docs/api.md``, rendered from ``CAPABILITIES`` (a unit test compares them)."""
    rows = ["| capability | routes | scope | job kind | worker task (queue) | Triton models |",
            "|---|---|---|---|---|---|"]
    for c in CAPABILITIES:
        models = [f"`{m}`" for m in c.models] + ([f"one of {_code(c.model_choices)}"] if c.model_choices else [])
        task = f"`{c.task}` (`{c.queue}`)" if c.task else "— (synchronous)"
        rows.append(f"| {c.name}: {c.summary} | `{c.route_prefix}` | `{c.scope.value}` | "
                    f"{f'`{c.job_kind}`' if c.job_kind else '—'} | {task} | {' and '.join(models) or '—'} |")
    return "\n".join(rows) + "\n"
