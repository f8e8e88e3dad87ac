"""Demo credentials of the embedded sandbox instance.

Plain constants: the client uses them to talk to the in-process sandbox when the
config says ``url = "sandbox"``. They open nothing but the sandbox.
"""

IMPORT_USER = "svc.import"
IMPORT_PASSWORD = "sandbox-import-pw"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "sandbox-admin-pw"
NO_ROLES_USER = "no.roles"
NO_ROLES_PASSWORD = "sandbox-noroles-pw"
ITIL_USER = "itil.user"
ITIL_PASSWORD = "sandbox-itil-pw"
OAUTH_CLIENT_ID = "importer"
OAUTH_CLIENT_SECRET = "sandbox-client-secret"
NO_APP_SERVICE_USER = "svc.nocmdb"  # import roles, but not app_service_admin
NO_APP_SERVICE_PASSWORD = "sandbox-nocmdb-pw"
