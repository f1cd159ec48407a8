-- Who the rules never touch: checked before any rule, and no rule can override it.
allow { roles = { "host", "moderator" } }
allow { users = { "alice" } }            -- the room's owner
allow { patterns = { "^svc%-" } }        -- service accounts (recorders, bots we run)
