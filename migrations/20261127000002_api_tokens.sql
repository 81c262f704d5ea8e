-- API tokens for the `authorization: Bearer <token>` header of commands. Only a SHA-256 hash of
-- each token is stored; the token itself is shown once, when it is created.
CREATE TABLE api_tokens (
    name             text        PRIMARY KEY,
    token_hash       bytea       NOT NULL UNIQUE,
    can_change_event boolean     NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz,
    revoked_at       timestamptz
);
