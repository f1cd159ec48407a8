-- Raid defence for a public room. Conditions are plain Lua over the event and a context:
--   ctx:count(type, seconds[, "room"])          events of that type by this user in this room (or room-wide)
--   ctx:distinct(type, field, seconds)          distinct values of ev[field] (e.g. distinct reporters)
--   ctx:offences(), ctx:age(), ctx:now()
-- See docs/policy.md.

-- A wave of brand-new accounts: once more than 15 users joined the room within 10 s, newcomers are
-- kept out for half an hour.
rule "join-wave" {
  on = "join",
  when = function(ev, ctx) return ctx:count("join", 10, "room") > 15 and ctx:age() < 60 end,
  action = ban(minutes(30)),
}

-- Chat flood: more than 5 messages in 10 s. Repeat offenders climb the ladder.
rule "chat-flood" {
  on = "chat",
  when = function(ev, ctx) return ctx:count("chat", 10) > 5 end,
  action = escalate { kick, ban(minutes(10)), ban_everywhere(hours(24)) },
  cooldown = 30,
}

-- Blasting audio: three "loud" stream reports within 30 s mutes the microphone for 10 minutes.
rule "loud-audio" {
  on = "stream",
  when = function(ev, ctx) return ev.kind == "audio" and ev.loud == true and ctx:count("stream", 30) >= 3 end,
  action = mute(minutes(10), { audio = true }),
}

-- Reports from at least three different people within 5 minutes.
rule "reported" {
  on = "report",
  when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 3 end,
  action = escalate { kick, ban(minutes(10)), ban(hours(24)) },
}
