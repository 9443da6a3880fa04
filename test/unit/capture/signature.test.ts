/**
 * Which signed NOTIFY payloads the listener believes (lib/capture/signature.ts): only those signed with the key,
 * once each, and only while their transaction could still legitimately reach the listener, as the snapshots taken
 * before LISTEN and at each probe tell.
 */
import t from 'tap'
import { createHmac } from 'node:crypto'
import { NotifyVerifier } from '../../../lib/capture/signature.js'

const key = Buffer.alloc(32, 7)
const sign = (body: string): string => createHmac('sha256', key).update(body, 'utf8').digest('hex') + body
const payload = (x: number): string => sign(JSON.stringify({ s: 'public', t: 'mt_doc_team', id: 'a', op: 'U', x, ts: 1 }))

function verifier (listeningAt = '100:105:102'): NotifyVerifier {
  const v = new NotifyVerifier()
  v.useKey(key)
  v.listening(listeningAt)
  return v
}

t.test('only payloads signed with the key are verified', async (t) => {
  const v = verifier()
  const real = payload(110)
  t.equal(v.verified(real), real.slice(64))
  t.equal(v.verified(real.slice(64)), null, 'unsigned')
  t.equal(v.verified('0'.repeat(64) + real.slice(64)), null, 'wrong signature')
  t.equal(v.verified(real.slice(0, 64) + real.slice(64).replace('"a"', '"b"')), null, 'another body')
  t.equal(v.verified('zz' + real.slice(2)), null, 'not hex')
  t.equal(v.verified(real.slice(0, 64).toUpperCase() + real.slice(64)), null, 'the same bytes in capitals: another payload')
  t.equal(v.verified('é'.repeat(64) + real.slice(64)), null, 'not ASCII')
  t.equal(new NotifyVerifier().verified(real), null, 'no key yet')
})

t.test('a transaction over before LISTEN is refused; one in progress then, or later, is believed once', async (t) => {
  // snapshot 100:105:102 — everything below 100 is over, 102 was running, 100, 101, 103, 104 were over
  const v = verifier()
  t.equal(v.admit(payload(99), '99'), 'replayed')
  t.equal(v.admit(payload(101), '101'), 'replayed', 'over, though above xmin')
  t.equal(v.admit(payload(102), '102'), 'fresh', 'running at the time: its NOTIFY comes at its commit')
  t.equal(v.admit(payload(102), '102'), 'replayed', 'the same payload again')
  t.equal(v.admit(payload(105), '105'), 'fresh', 'started after')
  t.equal(v.admit(payload(107), '107'), 'fresh')
})

t.test('each probe moves the floor to the snapshot of the probe before it', async (t) => {
  const v = verifier()
  t.equal(v.admit(payload(110), '110'), 'fresh')
  v.advance('112:115:113')
  // one probe: its snapshot is not the floor yet (a NOTIFY of 111 may still be on its way)
  t.equal(v.admit(payload(111), '111'), 'fresh')
  v.advance('120:120:')
  // now 112:115:113 is the floor: 111 and 114 were over then, and have arrived by now
  t.equal(v.admit(payload(114), '114'), 'replayed')
  t.equal(v.admit(payload(113), '113'), 'fresh', 'running at the floor\'s snapshot')
  t.equal(v.admit(payload(110), '110'), 'replayed', 'forgotten as seen, refused by the floor')
  t.equal(v.admit(payload(111), '111'), 'replayed')
})

t.test('listening again (a reconnect, a new leadership) starts from a new floor', async (t) => {
  const v = verifier()
  t.equal(v.admit(payload(130), '130'), 'fresh')
  v.listening('140:140:')
  t.equal(v.admit(payload(130), '130'), 'replayed', 'over before the new LISTEN')
  t.equal(v.admit(payload(141), '141'), 'fresh')
})
