-- The fleet's commands (docs/fleet.md, docs/cli.md): `rtcadmin ingest --to URL [EVENTS|-]` and
-- `rtcadmin run RULES... --from URL`. Called by rtcadmin.cli with its command object (output,
-- options, usage errors) and the helpers it shares (cli.internal).
local rtcadmin = require "rtcadmin"
local fleet = require "rtcadmin.fleet"

local M = {}

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RULES, EXIT_STRICT = 0, 1, 2, 3, 4
local BATCH = 512          -- events per pipelined XADD batch
local RETRY_FOR = 30       -- seconds ingest keeps trying while Redis is unreachable

-- Opens the connection and the log: conn, log, or nil, exit status (reported).
local function open(self, url, command, shards, internal)
  local ok, conn, err = pcall(rtcadmin.redis, url, { timeout = 5 })
  if not ok then return nil, self:usage_error(internal.plain(conn):gsub("^rtcadmin%.redis: ", "bad URL: "), command,
    true) end
  if not conn then
    self:warn("rtcadmin: cannot use Redis: ", tostring(err))
    return nil, EXIT_FAILED
  end
  local log
  ok, log, err = pcall(fleet.open, conn, { shards = shards })
  if not ok then
    conn:close()
    return nil, self:usage_error(internal.plain(log), command, true)
  end
  if not log then
    conn:close()
    self:warn("rtcadmin: cannot use the fleet at ", conn:where(), ": ", tostring(err))
    return nil, EXIT_FAILED
  end
  return conn, log
end

function M.ingest(self, internal)
  local url = self.opts.to
  if not url then return self:usage_error("--to redis://HOST:PORT[/DB] is required", "ingest") end
  if #self.pos > 1 then return self:usage_error("expected at most one EVENTS file (or -)", "ingest") end
  local shards
  if self.opts.shards then
    shards = tonumber(self.opts.shards)
    if not shards or shards % 1 ~= 0 or shards < 1 or shards > fleet.MAX_SHARDS then
      return self:usage_error("--shards must be a whole number from 1 to " .. fleet.MAX_SHARDS, "ingest", true)
    end
  end
  local path = self.pos[1] or "-"
  local fh, ferr = self:open_events(path)
  if not fh then return self:usage_error(internal.open_problem(path, ferr), "ingest", true) end
  local conn, log = open(self, url, "ingest", shards, internal)
  if not conn then
    if fh ~= io.stdin then fh:close() end
    return log
  end
  local name = path == "-" and "stdin" or path
  local batch, texts, sent, bad, down = {}, {}, 0, 0, nil
  local status = EXIT_OK

  -- Sends the batch, waiting (up to RETRY_FOR seconds) while Redis is unreachable. A batch sent
  -- again after a failure may be in the log twice: the engines drop repeated event ids.
  local function send()
    if #batch == 0 then return true end
    local started = rtcadmin.time()
    while true do
      local ids, err = log:append(conn, batch, texts)
      if ids then
        if down then
          self:warn(string.format("rtcadmin: Redis at %s reachable again", conn:where()))
          down = nil
        end
        sent = sent + #ids
        batch, texts = {}, {}
        return true
      end
      if not (type(err) == "table" and err.retryable) or rtcadmin.time() - started > RETRY_FOR then
        self:warn("rtcadmin: cannot append to the log: ", tostring(err))
        return false
      end
      if not down then
        down = true
        self:warn(string.format("rtcadmin: Redis at %s unreachable (%s); retrying for up to %d s", conn:where(),
          tostring(err.message), RETRY_FOR))
      end
      rtcadmin.sleep(0.5)
    end
  end

  -- Each line is checked decoded, and sent as it came (the engines decode it the same way).
  local last_line
  local reader = internal.events_from(function()
    last_line = fh:read("*l")
    return last_line
  end)
  for n, ev, err in reader do
    if ev then err = fleet.problem(ev) end
    if err then
      bad = bad + 1
      if bad <= internal.SKIPS_SHOWN then
        self:warn(string.format("%s:%d: skipped: %s", name, n, err))
      elseif bad == internal.SKIPS_SHOWN + 1 then
        self:warn(string.format("%s: more lines skipped; not shown, counted in the summary", name))
      end
      if self.opts.json then self:json({ kind = "invalid", source = name, line = n, reason = err }) end
    else
      batch[#batch + 1] = ev
      texts[#batch] = last_line
      if #batch >= BATCH and not send() then status = EXIT_FAILED break end
    end
  end
  if status == EXIT_OK and not send() then status = EXIT_FAILED end
  if fh ~= io.stdin then fh:close() end
  if status == EXIT_OK and self.opts.strict and bad > 0 then status = EXIT_STRICT end
  if self.opts.json then
    self:json({ kind = "summary", command = "ingest", to = conn:where(), shards = log.n, sent = sent, invalid = bad,
                exit = status })
  else
    self:say(string.format("%d events sent to %s (%d shards), %d lines skipped", sent, conn:where(), log.n, bad))
  end
  conn:close()
  return status
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("*l") or "host"
  if f then f:close() end
  return (h:gsub("[^%w@._-]", "-"))
end

local function pid()
  local f = io.open("/proc/self/stat")
  local p = f and f:read("*l"):match("^(%d+)") or tostring(os.time())
  if f then f:close() end
  return p
end

function M.run(self, internal)
  for _, o in ipairs { "drain", "strict" } do
    if self.opts[o] then return self:usage_error("--" .. o .. " does not go with --from", "run", true) end
  end
  local files, why = internal.split_args(self.pos, false)
  if not files then return self:usage_error(why, "run", true) end
  if #files == 0 then return self:usage_error("no rules files given", "run") end
  local idle, bad = internal.number_opt(self, "idle", "run")
  if bad then return bad end
  local every
  every, bad = internal.number_opt(self, "state-every", "run")
  if bad then return bad end
  if every ~= nil and not (every >= 0.01 and every <= 3600) then
    return self:usage_error("--state-every must be 0.01-3600 seconds", "run")
  end
  local metrics_every, mbad = self:metrics_every()
  if not metrics_every then return mbad end
  local name = self.opts.consumer or (hostname() .. "-" .. pid())
  if not name:find("^[%w@._:-]+$") or #name > 128 then
    return self:usage_error("--consumer must be 1-128 of A-Z a-z 0-9 @ . _ : -", "run", true)
  end
  local audit
  if self.opts.audit then
    local aerr
    audit, aerr = io.open(self.opts.audit, "a")
    if not audit then return self:usage_error("cannot open the audit log: " .. tostring(aerr), "run", true) end
    self.audit_fh = audit
  end
  -- One engine per shard, all with the same rules, one API client (one pacing budget) and the
  -- fleet's send journal. The first one checks the rules (and gives the table its widths).
  local client, worker
  -- The fleet's journal (made with the worker, after the rules are checked and Redis is reached).
  local journal = {}
  for _, f in ipairs { "sent", "was_sending", "sending", "done" } do
    journal[f] = function(id) return worker.journal[f](id) end
  end
  local function make_engine()
    local engine, eerr = self:policy_engine(true, audit, { journal = journal, client = client })
    if not engine then return nil, eerr end
    client = engine.client
    local errs = {}
    for _, f in ipairs(files) do
      local loaded, lerrs = engine:load(f)
      if not loaded then for _, e in ipairs(lerrs) do errs[#errs + 1] = e end end
    end
    if #errs > 0 then return nil, errs end
    self:show_decisions(engine)
    return engine
  end
  local first, ferr = make_engine()
  if not first then
    if type(ferr) == "table" then
      for _, e in ipairs(ferr) do self:warn("rtcadmin: ", e) end
      return EXIT_RULES
    end
    self:warn("rtcadmin: ", ferr)
    return EXIT_FAILED
  end
  for _, w in ipairs(first.warnings) do self:warn("warning: ", w) end
  self.engine = first
  self:table_widths(first)
  local conn, log = open(self, self.opts.from, "run", nil, internal)
  if not conn then return log end
  local ok, gerr = log:ensure_groups(conn)
  if not ok then
    self:warn("rtcadmin: cannot use the fleet at ", conn:where(), ": ", tostring(gerr))
    conn:close()
    return EXIT_FAILED
  end
  local spare = first
  worker = fleet.worker {
    conn = conn, log = log, name = name,
    lease = tonumber(os.getenv("RTCADMIN_FLEET_LEASE")) or 3,
    checkpoint_every = every, trim = not self.opts["keep-log"],
    engine = function()
      if spare then
        local e = spare
        spare = nil
        return e
      end
      return assert(make_engine())
    end,
    after_batch = function(engine, _, progress)
      if not engine.dry_run and engine:due() then engine:flush { progress = progress } end
    end,
    say = function(line) self:warn(line) end,
  }
  if not self.opts.json then self:decision_header() end
  self:warn(string.format("rtcadmin: engine %s reading %s (%d shards)", name, conn:where(), log.n))
  -- --metrics: every engine this process had (their totals), written between rounds when due.
  local ticker = self.opts.metrics and self:metrics_writer(metrics_every, function()
    return { clients = { client or nil }, engines = #worker.engines > 0 and worker:own_stats() or { first },
             fleet = { read = worker.read, acked = worker.acked, written = worker.checkpoints,
                       restored = worker.restored, shards = #worker:owned_list() } }
  end)
  rtcadmin.catch_signals()
  -- At the end of the input (--idle), actions waiting for a retry end (done, or reported failed)
  -- before the last checkpoint; on a signal they go into it, and the next owner sends them.
  local drain_until
  local function before_stop(engine, shard)
    if engine.dry_run or rtcadmin.caught_signal() or #engine:pending() == 0 then return end
    drain_until = drain_until or os.time() + 30
    self:warn(string.format("rtcadmin: shard %d: %d actions waiting for a retry; waiting for them until %s", shard,
      #engine:pending(), os.date("%H:%M:%S", drain_until)))
    -- (the leases are kept meanwhile: another engine must not take these shards while they drain)
    internal.drain(engine, drain_until, { step = worker.lease_ms / 3000, after = function() worker:keep_leases() end })
  end
  local done, werr = worker:run(function()
    if ticker then ticker.tick() end
    return rtcadmin.caught_signal() ~= nil
  end, idle, before_stop)
  local status = done and EXIT_OK or EXIT_FAILED
  if not done then self:warn("rtcadmin: ", tostring(werr)) end
  if ticker then ticker.write() end
  local t = worker:totals()
  if self.opts.json then
    self:json({ kind = "summary", command = "run", from = conn:where(), consumer = name, events = t.events,
                decisions = t.decisions, dry_run = t.dry_run, duplicates = t.duplicates, invalid = t.invalid,
                rule_errors = t.rule_errors, read = worker.read, acked = worker.acked, by_action = t.by_action,
                actions = { succeeded = t.succeeded, failed = t.failed, recovered = t.recovered, resent = t.resent },
                checkpoints = worker.checkpoints, restored = worker.restored, exit = status })
  else
    self:say(string.format("%s: %d entries read, %d acknowledged; %d events, %d decisions (%d dry-run), "
      .. "%d duplicates, %d invalid, %d rule errors; actions: %d succeeded, %d failed, %d not sent again "
      .. "(journal), %d sent again; %d checkpoints written, %d restored", name, worker.read, worker.acked, t.events,
      t.decisions, t.dry_run, t.duplicates, t.invalid, t.rule_errors, t.succeeded, t.failed, t.recovered or 0,
      t.resent or 0, worker.checkpoints, worker.restored))
  end
  if client then client:close() end
  if self.audit_fh then self.audit_fh:close() end
  conn:close()
  return status
end

M.EXIT = { ok = EXIT_OK, failed = EXIT_FAILED, usage = EXIT_USAGE }

return M
