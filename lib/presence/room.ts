/**
 * One entity's presence as this instance sees it: every instance's record of each user on it, merged into members
 * (a member is a user: its connections summed over instances, the latest info set anywhere), and the sockets here
 * that watch it. Changes are batched: at most one frame per interval goes to each socket, saying only the net change
 * of each user since the last one (a user that left and came back within it is no event; an info change is
 * `updated`). Above maxMembers members only counts go out, at most once a second, so a big room costs O(watchers)
 * per second instead of a frame per join.
 */
import type { Receiver } from '../ws/fanout.js'
import { PreparedFrame } from '../ws/prepared.js'
import { encodePresenceEvent, type PresenceEventData, type PresenceMember, type PresenceRef, type PresenceSnapshotData } from '../protocol/index.js'
import type { PresenceSettings } from './options.js'

/** One instance's record of a user on the entity: its connections there, and the info set there last (at `at`, ms). */
export interface Entry { c: number, info?: unknown, at: number, v: number }

/** A user on the entity, as merged from every instance's entry. */
interface Member { connections: number, info?: unknown, at: number, from: string }

/** count-only frames go out at most this often */
const COUNT_INTERVAL_MS = 1000

export class PresenceRoom {
  /** userId → instance id → that instance's entry */
  private readonly entries = new Map<string, Map<string, Entry>>()
  private readonly members = new Map<string, Member>()
  /** instance id → how many users it has entries for (an instance that stopped takes them all along) */
  readonly instances = new Map<string, number>()
  readonly watchers = new Set<Receiver>()
  /** each user's first state in the batch under way, in the order they changed */
  private log: Array<{ userId: string, before: Member | undefined }> = []
  /** sockets that joined while a batch was under way: their snapshot had the changes logged before them */
  private readonly late = new Map<Receiver, number>()
  private timer: NodeJS.Timeout | null = null
  private lastFlush = -Infinity
  /** the count sent last, while above maxMembers (null: lists are being sent) */
  private countSent: number | null = null

  constructor (readonly ref: PresenceRef, readonly settings: PresenceSettings) {}

  get count (): number {
    return this.members.size
  }

  /** Whether `userId` is a member (on any instance). */
  has (userId: string): boolean {
    return this.members.has(userId)
  }

  /** The version of an instance's entry for a user: a message about it applies only when newer. */
  versionOf (instance: string, userId: string): number {
    return this.entries.get(userId)?.get(instance)?.v ?? 0
  }

  /** Sets (or with null removes) one instance's entry for one user. */
  apply (instance: string, userId: string, entry: Entry | null): void {
    let byInstance = this.entries.get(userId)
    const had = byInstance?.has(instance) === true
    if (entry === null) {
      if (!had) return
      byInstance!.delete(instance)
      if (byInstance!.size === 0) this.entries.delete(userId)
      this.countInstance(instance, -1)
    } else {
      if (byInstance === undefined) this.entries.set(userId, byInstance = new Map())
      byInstance.set(instance, entry)
      if (!had) this.countInstance(instance, 1)
    }
    this.merge(userId)
  }

  /** An instance stopped: its entries go, and with them the members only it had. */
  removeInstance (instance: string): string[] {
    const users: string[] = []
    for (const [userId, byInstance] of this.entries) if (byInstance.has(instance)) users.push(userId)
    for (const userId of users) this.apply(instance, userId, null)
    return users
  }

  private countInstance (instance: string, by: number): void {
    const n = (this.instances.get(instance) ?? 0) + by
    if (n === 0) this.instances.delete(instance)
    else this.instances.set(instance, n)
  }

  /** Recomputes a member from its entries; logs the change. */
  private merge (userId: string): void {
    const before = this.members.get(userId)
    let after: Member | undefined
    for (const [instance, e] of this.entries.get(userId) ?? []) {
      if (after === undefined) after = { connections: 0, info: e.info, at: e.at, from: instance }
      else if (e.at > after.at || (e.at === after.at && instance > after.from)) Object.assign(after, { info: e.info, at: e.at, from: instance })
      after.connections += e.c
    }
    if (after === undefined) this.members.delete(userId)
    else this.members.set(userId, after)
    this.log.push({ userId, before })
    this.schedule()
  }

  /** Who is here now: at most maxMembers of them, and how many in all. */
  snapshot (): PresenceSnapshotData {
    const members: PresenceMember[] = []
    for (const [userId, m] of this.members) {
      if (members.length >= this.settings.maxMembers) break
      members.push(m.info === undefined ? { userId, connections: m.connections } : { userId, info: m.info, connections: m.connections })
    }
    return { count: this.members.size, members, truncated: this.members.size > this.settings.maxMembers }
  }

  addWatcher (socket: Receiver): void {
    this.watchers.add(socket)
    if (this.log.length > 0) this.late.set(socket, this.log.length)
  }

  removeWatcher (socket: Receiver): void {
    this.watchers.delete(socket)
    this.late.delete(socket)
  }

  /** Writes `frame` to every watcher but `except` (a signal, conflated per `key` for a socket that reads slowly). */
  broadcast (frame: string, except: Receiver | null, channel: string, key: string): number {
    const prepared = new PreparedFrame(frame)
    const meta = { channel, key, payloadType: 'signal', position: null, tenantId: null, prepared }
    let sent = 0
    for (const socket of this.watchers) if (socket !== except && socket.deliver(frame, meta)) sent++
    return sent
  }

  private schedule (): void {
    if (this.timer !== null) return
    const interval = this.members.size > this.settings.maxMembers || this.countSent !== null ? Math.max(COUNT_INTERVAL_MS, this.settings.intervalMs) : this.settings.intervalMs
    this.timer = setTimeout(() => this.flush(), Math.max(0, this.lastFlush + interval - Date.now()))
    this.timer.unref()
  }

  /** Sends the batch: lists, or (above maxMembers) the count; the full list once the room is back within it. */
  flush (): void {
    this.timer = null
    this.lastFlush = Date.now()
    const log = this.log
    this.log = []
    const count = this.members.size
    if (count > this.settings.maxMembers) {
      if (count !== this.countSent) this.send(encodePresenceEvent(this.ref, count), this.watchers)
      this.countSent = count
    } else if (this.countSent !== null) {
      this.countSent = null
      this.send(encodePresenceEvent(this.ref, count, { members: this.snapshot().members }), this.watchers)
    } else {
      const early = [...this.watchers].filter((socket) => !this.late.has(socket))
      const frame = this.changes(log, 0)
      if (frame !== null) this.send(frame, early)
      for (const [socket, from] of this.late) {
        const own = this.changes(log, from)
        if (own !== null) this.send(own, [socket])
      }
    }
    this.late.clear()
  }

  /** The frame of the net changes logged from `from` on; null when nothing changed. */
  private changes (log: ReadonlyArray<{ userId: string, before: Member | undefined }>, from: number): string | null {
    const first = new Map<string, Member | undefined>()
    for (let i = from; i < log.length; i++) if (!first.has(log[i].userId)) first.set(log[i].userId, log[i].before)
    const joined: NonNullable<PresenceEventData['joined']> = []
    const updated: NonNullable<PresenceEventData['updated']> = []
    const left: NonNullable<PresenceEventData['left']> = []
    for (const [userId, before] of first) {
      const after = this.members.get(userId)
      const item = after?.info === undefined ? { userId } : { userId, info: after.info }
      if (before === undefined && after !== undefined) joined.push(item)
      else if (before !== undefined && after === undefined) left.push({ userId })
      else if (before !== undefined && after !== undefined && (before.at !== after.at || before.from !== after.from) && JSON.stringify(before.info) !== JSON.stringify(after.info)) updated.push(item)
    }
    if (joined.length + updated.length + left.length === 0) return null
    const lists: Omit<PresenceEventData, 'entityType' | 'entityId' | 'tenantId' | 'count'> = {}
    if (joined.length > 0) lists.joined = joined
    if (updated.length > 0) lists.updated = updated
    if (left.length > 0) lists.left = left
    return encodePresenceEvent(this.ref, this.members.size, lists)
  }

  private send (frame: string, sockets: Iterable<Receiver>): void {
    const shared = new PreparedFrame(frame)
    for (const socket of sockets) socket.deliver(frame, undefined, shared)
  }

  close (): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }
}
