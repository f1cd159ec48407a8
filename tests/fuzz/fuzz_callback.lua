-- The RTC callback verifier (lua/rtcadmin/callback.lua over the C primitives rtcadmin.sha256 and
-- rtcadmin.secure_equal; the format: docs/callbacks.md). The input gives the seven signed field values
-- and the secret (any bytes). Checked: a signature is 64 lower-case hex digits and depends only on the sorted
-- values (swapping two fields' values keeps it); verify accepts exactly the right signature (any case)
-- and rejects it with one byte changed, cut short or extended; secure_equal agrees with ==; decode
-- and parse never raise on any body; the nonce moved to `Noce` (the 2023 docs' name) signs the same
-- and verifies, and with both names there is no signature and verify refuses; logtext.quote of any
-- input is printable ASCII within its bound.
local src = debug.getinfo(1, "S").source:match("^@(.*)/tests/fuzz/[^/]+$")
package.path = src .. "/lua/?.lua;" .. src .. "/lua/?/init.lua;" .. package.path
local rtcadmin = require "rtcadmin"
local callback = require "rtcadmin.callback"
local quote = require("rtcadmin.logtext").quote

local function check(cond, what) if not cond then error("INVARIANT: " .. what, 2) end end

local function split(data, n)
  local out, pos = {}, 1
  for i = 1, n do
    local len = data:byte(pos) or 0
    out[i] = data:sub(pos + 1, pos + len)
    pos = pos + 1 + len
  end
  return out, data:sub(pos)
end

return function(_, data)
  local parts, rest = split(data, 8)
  local fields = {}
  for i, k in ipairs(callback.SIGNED) do fields[k] = parts[i] end
  local secret = parts[8]

  local ok, got = pcall(callback.decode, data)
  check(ok and (got == nil or type(got) == "table"), "decode raised or returned " .. tostring(got))
  ok, got = pcall(callback.parse, rest)
  check(ok and (got == nil or type(got) == "table"), "parse raised or returned " .. tostring(got))

  check(rtcadmin.secure_equal(parts[1], parts[2]) == (parts[1] == parts[2]), "secure_equal differs from ==")
  check(rtcadmin.secure_equal(rest, rest), "secure_equal(x, x)")
  local q = quote(data)
  check(not q:find("[^\32-\126]"), "quote left a byte outside printable ASCII")
  check(#q <= 2 + 4 * 128 + #("...(" .. #data .. " bytes)"), "quote is longer than its bound")

  if secret == "" then return end
  local sig = callback.signature(fields, secret)
  check(type(sig) == "string" and #sig == 64 and not sig:find("[^0-9a-f]"), "signature is not 64 hex digits")
  local swapped = {}
  for k, v in pairs(fields) do swapped[k] = v end
  swapped.EventType, swapped.Nonce = fields.Nonce, fields.EventType
  check(callback.signature(swapped, secret) == sig, "the signature depends on which field holds a value")
  swapped.Noce, swapped.Nonce = fields.Nonce, nil
  swapped.EventType = fields.EventType
  check(callback.signature(swapped, secret) == sig, "the nonce as Noce signs differently")
  swapped.Signature = sig
  check(callback.verify(swapped, secret) == true, "the right signature is rejected with Noce")
  swapped.Nonce = fields.Nonce
  check(callback.signature(swapped, secret) == nil, "a signature with both Nonce and Noce")
  check(callback.verify(swapped, secret) == false, "verify accepts both Nonce and Noce")

  fields.Signature = sig
  check(callback.verify(fields, secret) == true, "the right signature is rejected")
  fields.Signature = sig:upper()
  check(callback.verify(fields, secret) == true, "the right signature in upper case is rejected")
  local i = (#rest % 64) + 1
  local flipped = sig:sub(1, i - 1) .. (sig:sub(i, i) == "0" and "1" or "0") .. sig:sub(i + 1)
  for _, wrong in ipairs { flipped, sig:sub(1, 63), sig .. "0", "", rest } do
    if wrong:lower() ~= sig then
      fields.Signature = wrong
      check(callback.verify(fields, secret) == false, "a wrong signature is accepted: " .. ("%q"):format(wrong))
    end
  end
end
