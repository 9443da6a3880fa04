/**
 * The NATS bus's history: JetStream streams, one per history limits in use (`<prefix>_HISTORY_<size>_<ttl>`, its
 * subjects `<prefix>:history.<size>_<ttl>.<channel>`), with `max_msgs_per_subject` = size and `max_age` = ttl. A
 * message is stored first (JetStream acks it with its stream sequence, the offset of its position; the epoch is the
 * stream's, drawn from when it was created, so a stream made again never reads an older position), then published
 * live on the channel. A change carried on several channels names its position in a header on the others.
 *
 * One instance publishes a channel's messages in order; two instances publishing on one channel at the same moment
 * (a host's publishes on several instances) may be delivered live in another order than stored.
 */
import { createHash } from 'node:crypto'
import { headers, NatsError, RetentionPolicy, StorageType, nanos, type JetStreamClient, type JetStreamManager, type NatsConnection, type StoredMsg } from 'nats'
import { subjectOf } from './subjects.js'
import { sinceOf, withPosition, type ChannelHistory, type Dedupe, type HistoryLimits } from './history.js'
import { GAP, KEPT, NatsReads, POSITION, START, directOf, positionOf, type Stream } from './history-nats-reads.js'

const encoder = new TextEncoder()
/** JetStream's error code for a publish whose expected last sequence is not the subject's */
const WRONG_LAST_SEQUENCE = 10071

export class NatsHistory implements ChannelHistory {
  private readonly reads = new NatsReads(async () => directOf(await this.manager()))
  private readonly js: JetStreamClient
  private jsm: Promise<JetStreamManager> | null = null
  private readonly streams = new Map<string, Promise<Stream>>()
  private readonly heads = new Map<string, Promise<string>>()
  private readonly base: string
  private readonly token: string

  /** what recent resumes read, held by this process (the history itself is the broker's) */
  get bytes (): number { return this.reads.bytes }

  /** `publish`: the live publish on the channel */
  constructor (private readonly nc: NatsConnection, prefix: string, private readonly publish: (channel: string, message: string) => Promise<void>) {
    this.js = nc.jetstream()
    this.base = prefix.replace(/[^A-Za-z0-9_-]/g, '_') + '_HISTORY'
    this.token = subjectOf(prefix + ':history')
    void this.forgetOnReconnect()
  }

  /**
   * Connected again: the server may have restarted and lost its streams (memory storage), made again since by
   * another instance with a new epoch and sequences counted anew. The streams are looked up again, and what was read
   * of them is dropped, so a position of the old ones is never read in the new ones.
   */
  private async forgetOnReconnect (): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type !== 'reconnect') continue
      this.streams.clear()
      this.reads.clear()
    }
  }

  private async manager (): Promise<JetStreamManager> {
    this.jsm ??= this.nc.jetstreamManager()
    return await this.jsm
  }

  /** The stream of these limits, made (or brought to them) the first time. */
  private async streamOf (limits: HistoryLimits): Promise<Stream> {
    const key = `${limits.size}_${Math.ceil(limits.ttlSeconds)}`
    let stream = this.streams.get(key)
    if (stream === undefined) {
      stream = this.open(this.base + '_' + key, `${this.token}.${key}`, limits)
      this.streams.set(key, stream)
      // a failure is tried again by the next message
      stream.catch(() => this.streams.delete(key))
    }
    return await stream
  }

  private async open (name: string, subjects: string, limits: HistoryLimits): Promise<Stream> {
    const jsm = await this.manager()
    const config = { name, subjects: [subjects + '.>'], storage: StorageType.Memory, retention: RetentionPolicy.Limits, max_msgs_per_subject: limits.size, max_age: nanos(Math.ceil(limits.ttlSeconds) * 1000), allow_direct: true }
    const info = await jsm.streams.add(config).catch(async (err: unknown) => {
      if (!(err instanceof NatsError)) throw err
      return await jsm.streams.info(name)
    })
    return { name, subjects, epoch: createHash('sha1').update(name + String(info.created)).digest('hex').slice(0, 8) }
  }

  async append (channel: string, message: string, limits: HistoryLimits, position?: string, dedupe?: Dedupe): Promise<string> {
    let stream = await this.streamOf(limits)
    const h = headers()
    if (position !== undefined) h.set(POSITION, position)
    // the change's key is the message id: JetStream drops the same id within its duplicate window (2 min)
    const msgID = dedupe === undefined ? undefined : createHash('sha1').update(channel + '\u0000' + dedupe.key).digest('hex')
    const store = async (): Promise<{ seq: number, duplicate: boolean }> => await this.js.publish(`${stream.subjects}.${subjectOf(channel)}`, encoder.encode(message), { headers: h, msgID })
    let ack
    try {
      ack = await store()
    } catch {
      // the stream may be gone (deleted, the server restarted and its memory lost): made again, with a new epoch
      this.streams.clear()
      this.reads.clear()
      stream = await this.streamOf(limits)
      ack = await store()
    }
    const at = (ack.duplicate ? await this.storedPosition(stream, ack.seq) : undefined) ?? position ?? stream.epoch + ':' + String(ack.seq)
    // stored before: its live publish went out unless it is the subject's last (the old leader may have died between
    // the two); then it goes out again at its position, which the instances that delivered it drop (lib/ws/positions.ts)
    if (!ack.duplicate || (dedupe?.check === true && await this.isLast(stream, channel, ack.seq))) await this.publish(channel, withPosition(at, message))
    return at
  }

  /**
   * A burst of subscribes to one channel reads its head once here (`heads`: those being read), and its start is
   * stored once across the instances (JetStream's duplicate window, by the message id): each start taking a place
   * of the subject's `size` would push out the starts and messages that clients hold.
   */
  async head (channel: string, limits: HistoryLimits): Promise<string> {
    let head = this.heads.get(channel)
    if (head === undefined) {
      head = this.readHead(channel, limits).finally(() => this.heads.delete(channel))
      this.heads.set(channel, head)
    }
    return await head
  }

  private async readHead (channel: string, limits: HistoryLimits): Promise<string> {
    const stream = await this.streamOf(limits)
    const subject = `${stream.subjects}.${subjectOf(channel)}`
    const last = await this.reads.get(stream, { last_by_subj: subject })
    if (last !== null) return headOf(stream, last)
    const start = async (msgID?: string): Promise<{ seq: number, duplicate: boolean }> => {
      // (headers of their own: a message id is written into them)
      const h = headers()
      h.set(START, '1')
      return await this.js.publish(subject, new Uint8Array(0), { headers: h, msgID })
    }
    let ack = await start(createHash('sha1').update('start\u0000' + subject).digest('hex'))
    // the start stored within the duplicate window was purged since (a reset): this one is stored anew
    if (ack.duplicate && !await this.reads.stored(stream, subject, ack.seq)) ack = await start()
    return stream.epoch + ':' + String(ack.seq)
  }

  async keep (channels: readonly string[], limits: HistoryLimits): Promise<void> {
    const stream = await this.streamOf(limits)
    const stale = Date.now() - limits.ttlSeconds * 500
    const gapSubject = `${stream.subjects}.${GAP}`
    const lastGap = async (): Promise<number> => (await this.reads.get(stream, { last_by_subj: gapSubject }))?.seq ?? 0
    const gap = await lastGap()
    let kept = false
    await Promise.all(channels.map(async (channel) => {
      const subject = `${stream.subjects}.${subjectOf(channel)}`
      const last = await this.reads.get(stream, { last_by_subj: subject })
      // gone already (or never had one): a resume from before is refused anyway
      if (last === null || last.time.getTime() > stale) return
      const position = headOf(stream, last)
      // a gap marked after it: a resume from it is refused, and a keep-alive must not outlive the gap's marker
      if ((sinceOf(position)?.pos ?? 0) <= gap) return
      const h = headers()
      h.set(KEPT, position)
      // only right after that message: one stored meanwhile would be skipped by a resume matching the keep-alive
      kept = await this.js.publish(subject, new Uint8Array(0), { headers: h, expect: { lastSubjectSequence: last.seq } }).then(() => true, notLast) || kept
    }))
    // a gap marked meanwhile: marked again after the keep-alives, so that none outlives its marker
    if (kept && await lastGap() !== gap) await this.js.publish(gapSubject, new Uint8Array(0))
  }

  private async isLast (stream: Stream, channel: string, seq: number): Promise<boolean> {
    const last = await directOf(await this.manager()).getMessage(stream.name, { last_by_subj: `${stream.subjects}.${subjectOf(channel)}` }).catch(() => null)
    return last?.seq === seq
  }

  /** The position a stored message went out at (its header, or its sequence). */
  private async storedPosition (stream: Stream, seq: number): Promise<string | undefined> {
    const stored = await (await this.manager()).streams.getMessage(stream.name, { seq }).catch(() => null)
    const named = stored?.header?.get(POSITION) ?? ''
    return named !== '' ? named : undefined
  }

  async after (channel: string, since: string, limits?: HistoryLimits): Promise<string[] | null> {
    const at = sinceOf(since)
    if (at === null || limits === undefined) return null
    const stream = await this.streamOf(limits)
    // every position of the stream's channels is of its epoch
    if (at.epoch !== stream.epoch) return null
    return await this.reads.after(stream, `${stream.subjects}.${subjectOf(channel)}`, since, at.pos, limits)
  }

  async reset (channel: string): Promise<void> {
    const jsm = await this.manager()
    for (const opened of this.streams.values()) {
      const stream = await opened
      const subject = `${stream.subjects}.${subjectOf(channel)}`
      this.reads.drop(stream, subject)
      await jsm.streams.purge(stream.name, { filter: subject })
    }
  }

  /** A marker in every history stream: no resume may pass its sequence. */
  async markGap (): Promise<void> {
    const jsm = await this.manager()
    for await (const name of jsm.streams.names()) {
      if (!name.startsWith(this.base + '_')) continue
      const info = await jsm.streams.info(name)
      const subjects = info.config.subjects[0].slice(0, -2)
      await this.js.publish(`${subjects}.${GAP}`, new Uint8Array(0))
    }
  }
}

/** The channel's position as its last stored message says: a keep-alive's names the one it stands in for. */
function headOf (stream: Stream, last: StoredMsg): string {
  const kept = last.header?.get(KEPT) ?? ''
  return kept !== '' ? kept : positionOf(stream, last)
}

/** A publish refused because the subject had another message since (JetStream's wrong last sequence): nothing kept. */
function notLast (err: unknown): false {
  if (err instanceof NatsError && err.api_error?.err_code === WRONG_LAST_SEQUENCE) return false
  throw err
}
