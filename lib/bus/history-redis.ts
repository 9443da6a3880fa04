/**
 * The Redis bus's history: a stream per channel (`{<channel>}:history`, in the channel's hash slot, so a Redis
 * Cluster keeps it on the shard that publishes the channel), appended and published by one script: the entry's ID is
 * its offset (`<offset>-0`), its fields the epoch, the server's time and the message as it went out. `MAXLEN ~ size`
 * bounds it, PEXPIRE drops it `ttlSeconds` after the channel's last message; a stream that is gone (expired, flushed,
 * a restart without persistence) starts again with a new epoch. Gaps are marked (in the server's time, µs) under
 * `<prefix>:history-gap`.
 */
import { createHash } from 'node:crypto'
import calculateSlot from 'cluster-key-slot'
import type { Cluster, Redis } from 'ioredis'
import { newEpoch, sinceOf, type ChannelHistory, type Dedupe, type HistoryLimits } from './history.js'

/** how many of a channel's last entries a new leader's publish looks through for the same change */
const DEDUPE_DEPTH = 200

/** the server's time in microseconds: a script runs alone, so two never share one */
const NOW_US = "local now = redis.call('TIME') local us = now[1] * 1000000 + now[2]"

/**
 * KEYS: the stream. ARGV: channel, message, size, ttl ms, the epoch if the stream is new, '1' for sharded pub/sub,
 * the change's position ('': the channel's next), its key ('': none), '1' to look for the key among the last
 * DEDUPE_DEPTH entries first (returns the position of the one found, publishing nothing).
 */
const APPEND = `
if ARGV[9] == '1' then
  local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ${DEDUPE_DEPTH})
  for i = 1, #recent do
    local fields = recent[i][2]
    if fields[10] == ARGV[8] then return fields[6] end
  end
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local epoch = ARGV[5]
local offset = 1
if #last > 0 then
  offset = tonumber(string.match(last[1][1], '^(%d+)')) + 1
  epoch = last[1][2][2]
end
${NOW_US}
local position = ARGV[7]
if position == '' then position = epoch .. ':' .. offset end
local message = '@' .. position .. ' ' .. ARGV[2]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'e', epoch, 't', string.format('%d', us), 'p', position, 'm', message, 'k', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[6] == '1' then redis.call('SPUBLISH', ARGV[1], message) else redis.call('PUBLISH', ARGV[1], message) end
return position`

/**
 * KEYS: the stream. ARGV: the position resumed from, the last gap's time (µs; '-1': none). The messages after it,
 * or nil. Searched from the newest entry: a resume comes soon after its drop.
 */
const AFTER = `
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  if fields[6] == ARGV[1] then
    if tonumber(fields[4]) <= tonumber(ARGV[2]) then return false end
    local out = {}
    for j = i + 1, #entries do out[#out + 1] = entries[j][2][8] end
    return out
  end
end
return false`

/**
 * KEYS: the stream. ARGV: the epoch if the stream is new, ttl ms. The last entry's position; for a stream with none,
 * its start: an entry at offset 0 with no message (ID `0-1`: the first message's is `1-0`).
 */
const HEAD = `
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then return last[1][2][6] end
${NOW_US}
local position = ARGV[1] .. ':0'
redis.call('XADD', KEYS[1], '0-1', 'e', ARGV[1], 't', string.format('%d', us), 'p', position, 'm', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return position`

/** KEYS: the gap key. */
const MARK_GAP = `${NOW_US} redis.call('SET', KEYS[1], string.format('%d', us)) return 1`

type RedisClient = Redis | Cluster

class Script {
  readonly sha: string
  constructor (readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex')
  }

  /** EVALSHA, and EVAL once the server does not know it (a restart, SCRIPT FLUSH). */
  async run (client: RedisClient, keys: string[], args: Array<string | number>): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, keys.length, ...keys, ...args)
    } catch (err) {
      if (!(err as Error).message.startsWith('NOSCRIPT')) throw err
      return await client.eval(this.source, keys.length, ...keys, ...args)
    }
  }
}

const scripts = { append: new Script(APPEND), after: new Script(AFTER), head: new Script(HEAD), markGap: new Script(MARK_GAP) }

export class RedisHistory implements ChannelHistory {
  readonly bytes = null
  private readonly gapKey: string

  /** `publish`: a channel with no key in its own slot (a Redis Cluster; see keyOf) is published without history */
  constructor (private readonly client: RedisClient, prefix: string, private readonly sharded: boolean, private readonly publish: (channel: string, message: string) => Promise<void>) {
    this.gapKey = prefix + ':history-gap'
  }

  /**
   * The stream of a channel: in its hash slot. A channel that has a hash tag of its own keeps it; another is made
   * the tag. On a cluster, a channel that cannot be made a tag (a '}' in it) has no history (null).
   */
  keyOf (channel: string): string | null {
    const key = (/\{[^}]+\}/.test(channel) ? channel : '{' + channel + '}') + ':history'
    return !this.sharded || calculateSlot(key) === calculateSlot(channel) ? key : null
  }

  async append (channel: string, message: string, limits: HistoryLimits, position?: string, dedupe?: Dedupe): Promise<string | undefined> {
    const key = this.keyOf(channel)
    if (key === null) {
      await this.publish(channel, message)
      return position
    }
    const args = [channel, message, limits.size, Math.ceil(limits.ttlSeconds * 1000), newEpoch(), this.sharded ? '1' : '0', position ?? '', dedupe?.key ?? '', dedupe?.check === true ? '1' : '0']
    return String(await scripts.append.run(this.client, [key], args))
  }

  async after (channel: string, since: string): Promise<string[] | null> {
    const key = this.keyOf(channel)
    if (sinceOf(since) === null || key === null) return null
    // read apart from the stream: on a cluster the two keys live on different shards. A gap marked between the two
    // reads reaches this subscriber as a resync (it watches the channel already)
    const gap = await this.client.get(this.gapKey)
    const messages = await scripts.after.run(this.client, [key], [since, gap ?? '-1'])
    return Array.isArray(messages) ? messages as string[] : null
  }

  async head (channel: string, limits: HistoryLimits): Promise<string | null> {
    const key = this.keyOf(channel)
    if (key === null) return null
    return String(await scripts.head.run(this.client, [key], [newEpoch(), Math.ceil(limits.ttlSeconds * 1000)]))
  }

  async keep (channels: readonly string[], limits: HistoryLimits): Promise<void> {
    const ttl = Math.ceil(limits.ttlSeconds * 1000)
    // one command each, sent together (on a cluster the streams are on many shards); a stream gone stays gone
    await Promise.all(channels.map(async (channel) => {
      const key = this.keyOf(channel)
      if (key !== null) await this.client.pexpire(key, ttl)
    }))
  }

  async reset (channel: string): Promise<void> {
    const key = this.keyOf(channel)
    if (key !== null) await this.client.del(key)
  }

  async markGap (): Promise<void> {
    await scripts.markGap.run(this.client, [this.gapKey], [])
  }
}
