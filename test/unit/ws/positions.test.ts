/**
 * Channel positions: what a channel's sockets are sent says the channel's position, a delta's base is named as the
 * sockets know it — found among the channel's last few changes (an event stream's appends go out on the aggregate's
 * channel between two of its document's changes) — and a patch whose base did not go out here goes out full.
 */
import t from 'tap'
import { ChannelPositions } from '../../../lib/ws/positions.js'
import type { Envelope } from '../../../lib/route/envelope.js'

const frame = (position: string, extra = ''): string => `{"type":"notification","data":{"position":"${position}"${extra}}}`

function envelope (position: string, at: string | undefined, payloadType: 'full' | 'delta', base?: string): Envelope {
  return {
    kind: 'notification',
    ts: 1,
    payloadType,
    traceparent: null,
    position,
    tenantId: null,
    frame: frame(position),
    at,
    ...(base === undefined ? {} : { delta: { frame: frame(position, `,"basePosition":"${base}"`), base } })
  }
}

t.test('a patch names its base at the channel position it went out at, across appends between', async (t) => {
  const positions = new ChannelPositions()
  const channel = {}
  const created = envelope('n:10', 'e:1', 'delta')
  positions.apply(channel, created)
  t.equal(created.frame, frame('e:1'), 'the frame says the channel position')
  t.equal(created.position, 'e:1')
  positions.apply(channel, envelope('n:11', 'e:2', 'full')) // an append of the aggregate's stream
  const updated = envelope('n:12', 'e:3', 'delta', 'n:10')
  positions.apply(channel, updated)
  t.same(updated.delta, { frame: frame('e:3', ',"basePosition":"e:1"'), base: 'e:1' }, 'a patch of the document at e:1')
  t.equal(positions.translate(channel, 'n:11'), 'e:2', 'a snapshot at a change that went out here: the channel position')
  t.equal(positions.translate(channel, 'n:99'), 'n:99', 'else as it is')
})

t.test('a patch whose base did not go out here goes out full; a channel without history is left as it is', async (t) => {
  const positions = new ChannelPositions()
  const channel = {}
  const orphan = envelope('n:5', 'e:7', 'delta', 'n:4')
  positions.apply(channel, orphan)
  t.equal(orphan.delta, undefined, 'no patch: the full document goes')
  for (let i = 0; i < 10; i++) positions.apply(channel, envelope(`n:${20 + i}`, `e:${8 + i}`, 'full'))
  const late = envelope('n:40', 'e:30', 'delta', 'n:5')
  positions.apply(channel, late)
  t.equal(late.delta, undefined, 'a base older than the last few: full')
  const plain = envelope('n:50', undefined, 'full')
  positions.apply(channel, plain)
  t.equal(plain.frame, frame('n:50'), 'no history position: unchanged')
})

t.test('a message at a position that went out a moment ago is not delivered again', async (t) => {
  const positions = new ChannelPositions()
  const channel = {}
  t.equal(positions.apply(channel, envelope('n:10', 'e:1', 'full')), true)
  t.equal(positions.apply(channel, envelope('n:10', 'e:1', 'full')), false, 'the same channel position: a new leader\'s publish of what went out')
  t.equal(positions.apply({}, envelope('n:10', 'e:1', 'full')), true, 'on another channel it is new')
  t.equal(positions.apply(channel, envelope('n:11', 'e:2', 'full')), true)
  t.equal(positions.apply(channel, envelope('n:12', undefined, 'full')), true, 'a message without a channel position is always delivered')
})
