-- The policy engine's outbox: decisions become API calls, sent through client:batch (paced,
-- retried by the client), with bans going through rtcadmin.bans; retryable failures wait for a
-- later flush with backoff, the rest are kept as failed. Its functions are engine methods
-- (rtcadmin.policy installs them). See docs/policy.md ("Decisions, actions and the audit log").
local bans = require "rtcadmin.bans"
local events = require "rtcadmin.events"

local outbox = {}

local type, ipairs, tostring, pcall = type, ipairs, tostring, pcall
local math_min, math_max = math.min, math.max
local iso_time, wall_clock = events.iso_time, events.wall_clock
local MAX_FAILURES_LISTED = 10000
local Engine = outbox -- the methods below are the engine's

-- The API call that carries out decision d, as a client:batch entry.
local function decision_call(d)
  local k = d.action
  if k == "kick" then return { "kick_user", d.app_id, d.room_id, d.user_id } end
  if k == "ban" then
    return { "ban_user", { app_id = d.app_id, room_id = d.room_id, user_id = d.user_id, duration = d.duration } }
  end
  if k == "ban_everywhere" then
    return { "ban_user", { app_id = d.app_id, user_id = d.user_id, duration = d.duration } }
  end
  return { "mute_user", { app_id = d.app_id, room_id = d.room_id, user_id = d.user_id, audio = d.audio,
                          video = d.video, duration = d.duration } }
end
outbox.decision_call = decision_call

local function plain_error(err)
  if type(err) ~= "table" and type(err) ~= "userdata" then
    return { code = "Error", message = tostring(err), retryable = false }
  end
  return { code = err.code, message = err.message, http_status = err.http_status, request_id = err.request_id,
           retryable = err.retryable == true, action = err.action }
end

-- The bans the engine made (see Engine:flush): keyed by app, room ("" for app-wide) and user.
local function ban_key(d)
  return d.app_id .. "\n" .. (d.action == "ban" and d.room_id or "") .. "\n" .. d.user_id
end

-- Counts a decision under its final outcome (dry_run, ok, extended, already, failed, recovered) in
-- st.by_outcome, keyed "action outcome rule" (action and outcome are single words; rule names may be
-- anything): once per decision, when nothing more will happen to it. The metrics read it
-- (rtcadmin.metrics, rtcadmin_policy_decisions_total).
function Engine:_count_outcome(d)
  local by, key = self.st.by_outcome, d.action .. " " .. d.outcome .. " " .. d.rule
  by[key] = (by[key] or 0) + 1
end

-- When the engine's own ban of a decision's target ends (engine time), if it knows of one.
function Engine:_ban_ends(d)
  local b = self.bans.map[ban_key(d)]
  return b and b.ends
end

-- Sends the queued decisions and the retries that are due through client:batch. Returns a summary
-- {sent, succeeded, failed, waiting}. `opts.progress` is passed to client:batch.
--
-- Bans go through rtcadmin.bans: a ban whose target is banned already (BanRoomUser leaves that ban
-- as it is) is extended with UpdateBanRoomUserRule in a follow-up batch (outcome "extended"),
-- unless the engine made that ban itself and it ends no earlier than the new one would (outcome
-- "already": nothing more is sent). `ban_until` is when the ban ends, as far as the engine knows.
--
-- With a send journal (policy.new{journal = ...}), a decision whose id it lists as sent is not sent
-- again (outcome "recovered", `recovered = true`); one it lists as being sent when this engine has
-- not sent it yet (a previous run stopped in the middle) is sent and marked `resent = true`. Each
-- decision sent is noted as sending just before the requests go out, and as done once it is
-- finished (succeeded, or failed for good; a retry stays "sending").
function Engine:flush(opts)
  local now = self.now()
  local batch = self.queue
  self.queue = {}
  local still = {}
  for _, d in ipairs(self.waiting) do
    if d.next_retry_at <= now then batch[#batch + 1] = d else still[#still + 1] = d end
  end
  self.waiting = still
  local journal = self.journal
  if journal and #batch > 0 then batch = self:_journal_check(batch) end
  local summary = { sent = #batch, succeeded = 0, failed = 0, waiting = 0 }
  if #batch == 0 then summary.waiting = #self.waiting; return summary end
  local calls, ends = {}, {}
  for i, d in ipairs(batch) do
    calls[i] = decision_call(d)
    if d.action == "ban" or d.action == "ban_everywhere" then ends[i] = self:_ban_ends(d) end
  end
  if journal then
    for _, d in ipairs(batch) do journal.sending(d.decision_id) end
  end
  -- A ban the engine knows to end no earlier than this one would (from now) is kept as it is.
  local function keep(i) return ends[i] ~= nil and ends[i] >= now + batch[i].duration end
  local ok, results = pcall(bans.batch, self.client, calls, { progress = opts and opts.progress }, keep)
  local after = self.now()
  local st, cfg = self.st, self.cfg
  for i, d in ipairs(batch) do
    local r = ok and results[i] or { ok = false, err = { code = "BatchError", message = tostring(results) } }
    d.attempts = d.attempts + 1
    d.time = iso_time(wall_clock())
    d.next_retry, d.next_retry_at, d.ban_until, d.extend_request_id = nil, nil, nil, nil
    if d.attempts > 1 then st.retried = st.retried + 1 end
    if r.ok then
      d.outcome, d.error = "ok", nil
      d.request_id = r.meta and r.meta.request_id
      local ban = r.ban
      if ban == "already" then
        d.outcome = "already"
        d.ban_until = ends[i] and iso_time(ends[i])
        st.bans_already = st.bans_already + 1
      elseif ban then
        if ban == "extended" then
          d.outcome = "extended"
          d.extend_request_id = r.extend.meta and r.extend.meta.request_id
          st.bans_extended = st.bans_extended + 1
        end
        -- It ends `duration` after the request reached the service: after `now` (a lower bound).
        self.bans:put(ban_key(d), { ends = now + d.duration })
        d.ban_until = iso_time(now + d.duration)
      end
      st.succeeded = st.succeeded + 1
      summary.succeeded = summary.succeeded + 1
    else
      local e = plain_error(r.err)
      d.error, d.request_id = e, e.request_id
      if e.retryable and d.attempts < cfg.max_attempts then
        d.outcome = "retry"
        d.next_retry_at = after + math_min(cfg.retry_cap, cfg.retry_base * 2 ^ (d.attempts - 1))
        d.next_retry = iso_time(d.next_retry_at)
        self.waiting[#self.waiting + 1] = d
      else
        d.outcome = "failed"
        -- The most recent failures stay listed (all are in the audit log and counted).
        if #self.failures >= MAX_FAILURES_LISTED then table.remove(self.failures, 1) end
        self.failures[#self.failures + 1] = d
        st.failed = st.failed + 1
        summary.failed = summary.failed + 1
      end
    end
    if d.outcome ~= "retry" then
      self:_count_outcome(d)
      if journal then journal.done(d.decision_id) end
    end
    self:_emit(d)
    if self.on_result then self.on_result(d) end
  end
  summary.waiting = #self.waiting
  return summary
end

-- The decisions of a batch the journal lets through: those it lists as sent are recorded as
-- recovered (audit, on_result) and left out.
function Engine:_journal_check(batch)
  local journal, st, keep = self.journal, self.st, {}
  for _, d in ipairs(batch) do
    local id = d.decision_id
    if journal.sent(id) then
      d.outcome, d.recovered, d.time = "recovered", true, iso_time(wall_clock())
      d.next_retry, d.next_retry_at = nil, nil
      st.recovered = st.recovered + 1
      self:_count_outcome(d)
      self:_emit(d)
      if self.on_result then self.on_result(d) end
    else
      if d.attempts == 0 and not d.resent and journal.was_sending(id) then
        d.resent = true
        st.resent = st.resent + 1
      end
      keep[#keep + 1] = d
    end
  end
  return keep
end

-- Decisions not yet done: queued (never sent) and waiting for a retry, oldest first.
function Engine:pending()
  local list = {}
  for _, d in ipairs(self.queue) do list[#list + 1] = d end
  for _, d in ipairs(self.waiting) do list[#list + 1] = d end
  return list
end

-- Seconds until the next retry is due (nil when nothing waits).
function Engine:next_retry_in()
  local soonest
  for _, d in ipairs(self.waiting) do
    if not soonest or d.next_retry_at < soonest then soonest = d.next_retry_at end
  end
  return soonest and math_max(0, soonest - self.now()) or nil
end

-- Whether flush has something to send now: a queued decision, or a retry that is due.
function Engine:due()
  return #self.queue > 0 or (self:next_retry_in() or 1) == 0
end

-- Decisions that failed for good (non-retryable error, or out of attempts).
function Engine:failed() return self.failures end

return outbox
