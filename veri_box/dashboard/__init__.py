"""The dashboard: server-rendered pages (Jinja2) with htmx fragments, behind a session login.

Handlers are thin: every write goes through the same service function the API's controller
calls, so the dashboard accepts and rejects exactly what the API does, and shows the API's
error code and message as HTML. One module per page (or group of pages); rendering.py holds
what they share.
"""

from __future__ import annotations

from litestar import Router, post
from litestar.exceptions import HTTPException
from litestar.static_files import create_static_files_router

from ..auth import rule_guard
from ..sessions import Sessions, login_guard, reading_guard
from ..settings import Settings
from ..store import Store
from . import audit as audit_pages
from . import compare, job_form, job_page, jobs, library, login, playground
from . import settings as settings_pages
from .rendering import STATIC, dashboard_errors


def routers(settings: Settings, sessions: Sessions, store: Store) -> list[Router]:
    """The dashboard's routes: the login (open), everything else behind the session guard,
    and the static files."""
    handlers = {HTTPException: dashboard_errors, Exception: dashboard_errors}
    protected = Router(
        path="/",
        # After the session: each route's opt["rule"] (roles; see veri_box/auth.py).
        guards=[login_guard(sessions), rule_guard(store)],
        exception_handlers=handlers,
        include_in_schema=False,
        route_handlers=[
            login.logout,
            jobs.jobs_page,
            jobs.jobs_table,
            compare.compare_page,
            playground.playground_page,
            playground.deploy_job,
            playground.playground_chat,
            playground.deployment_status,
            playground.deployment_requests_panel,
            jobs.save_labels,
            job_form.new_job_page,
            job_form.memory_estimate,
            job_form.create_job,
            job_form.start_demo,
            job_page.job_page,
            job_page.job_summary,
            job_page.cancel_job,
            job_page.job_metrics,
            job_page.job_log,
            job_page.job_log_text,
            job_page.job_rollouts,
            job_page.rollouts_by_step,
            job_page.clips_by_step,
            job_page.job_artifacts,
            job_page.hf_push_panel,
            job_page.push_to_hub,
            job_page.merge_panel,
            job_page.merge_job,
            job_page.evaluation_panel,
            job_page.evaluate_job,
            job_page.delete_job,
            library.datasets_page,
            # Its body limit is the box's upload limit, as for the API's dataset uploads.
            post(
                "/datasets",
                include_in_schema=False,
                request_max_body_size=settings.max_upload_bytes + 2**20,
                opt={"rule": "member"},
            )(library.upload_dataset),
            library.dataset_rows,
            library.dataset_file,
            library.delete_dataset,
            library.reward_functions_page,
            library.upload_reward_function,
            library.reward_function_source,
            library.delete_reward_function,
            library.reward_test_form,
            library.run_reward_test,
            audit_pages.audit_page,
            settings_pages.settings_page,
            settings_pages.devices_panel,
            settings_pages.create_api_key,
            settings_pages.revoke_api_key,
            settings_pages.save_lab_quotas,
            settings_pages.save_key_quotas,
            settings_pages.save_openreward,
            settings_pages.delete_openreward,
            settings_pages.save_wandb,
            settings_pages.delete_wandb,
            settings_pages.save_huggingface,
            settings_pages.delete_huggingface,
            settings_pages.provider_quotes,
            settings_pages.save_provider,
            settings_pages.delete_provider,
        ],
    )
    open_ = Router(
        path="/",
        guards=[reading_guard(sessions), rule_guard(store)],
        exception_handlers=handlers,
        include_in_schema=False,
        route_handlers=[login.home, login.login_page, login.login],
    )
    static = create_static_files_router(
        path="/static",
        directories=[STATIC],
        include_in_schema=False,
        cache_control=None,
        send_as_attachment=False,
    )
    return [open_, protected, static]
