/**
 * The filters of one feed channel on this instance, and what each filter's group of sockets holds: its members, its
 * sockets' seats, and the index that takes a change only to the groups it may concern (lib/ws/filters.ts tells how
 * filters are shared and bounded).
 */
import type { FrameMeta, Receiver } from './fanout.js'
import type { SnapshotEntity, Visibility } from '../reads/snapshot.js'
import { DocumentKeys, forSubscription, matches, scalarKey, valueAt, type Condition } from '../protocol/index.js'
import { PreparedFrame } from './prepared.js'

/** A change of the type as the groups see it. */
interface TypeChange {
  frame: string
  changeType: string
  txid: string | undefined
  /** tenant and id */
  key: string
  /** the document after the change; null: deleted; undefined: not known (a minimal frame: the read found nothing) */
  document: unknown
  /** the document's values as conditions compare them, read once for every group */
  keys: DocumentKeys
}

/** Whose a seat is: the connection (its id), and its client address. */
export interface FilterHolder {
  readonly id: number
  readonly ip: string
}

/** A socket's place in a group: frames wait while its own snapshot is read, then those the snapshot saw are skipped. */
export interface Seat {
  deferred: Array<{ frame: string, txid: string | undefined }> | null
  saw: Visibility | null
  holder: FilterHolder
}

/** a membership read after a gap that failed is tried again after this long */
const RELOAD_RETRY_MS = 1000

const entityKey = (tenantId: string | null | undefined, entityId: string): string => (tenantId ?? '') + '\u0000' + entityId

/** The watchers of one filter of one feed channel, and the entities that match it. */
export class FilterGroup {
  readonly members = new Set<string>()
  readonly seats = new Map<Receiver, Seat>()
  /** changes that came while the membership was being read */
  pending: TypeChange[] | null = []
  /** after the read: changes it saw may still be on their way, and are skipped until a later one comes */
  saw: Visibility | null = null
  /** the membership read: the matching entities (with documents when its creator asked for a snapshot) */
  loaded: Promise<SnapshotEntity[]> = Promise.resolve([])

  /**
   * `read`: the matching entities, with their documents or not; past `limited` matches (limits.maxFilterMatches) it
   * rejects with SnapshotUnavailable, without it (a reload of a group that grew past it live) it reads them all
   */
  constructor (readonly subscriptionId: string, readonly conditions: Condition[], readonly read: (documents: boolean, limited?: boolean) => Promise<{ entities: SnapshotEntity[], visibility: Visibility }>) {}

  /** Applies a change of the type: membership, then the frame to the watchers when it concerns the filter. */
  apply (change: TypeChange, index: TypeFilters): void {
    if (this.pending !== null) {
      this.pending.push(change)
      return
    }
    if (this.saw !== null) {
      if (this.saw.saw(change.txid)) return
      this.saw = null
    }
    const was = this.members.has(change.key)
    const now = change.document === undefined ? was : matches(change.document, this.conditions, change.keys)
    if (!was && !now) return
    let changeType = change.changeType
    if (now && !was) {
      changeType = 'entered'
      this.members.add(change.key)
      index.joined(change.key, this)
    } else if (was && !now) {
      if (changeType !== 'deleted') changeType = 'left'
      this.members.delete(change.key)
      index.left(change.key, this)
    }
    this.emit(forSubscription(change.frame, changeType, this.subscriptionId), change.txid)
  }

  emit (frame: string, txid: string | undefined): void {
    const shared = new PreparedFrame(frame)
    for (const [receiver, seat] of this.seats) {
      if (seat.deferred !== null) {
        seat.deferred.push({ frame, txid })
        continue
      }
      if (seat.saw !== null) {
        if (seat.saw.saw(txid)) continue
        seat.saw = null
      }
      receiver.deliver(frame, undefined, shared)
    }
  }
}

/** Every filter of one feed channel on this instance: the one receiver of the channel. */
export class TypeFilters implements Receiver {
  readonly groups = new Map<string, FilterGroup>()
  /** groups by their first condition's path, then by each value it allows */
  private readonly index = new Map<string, { parts: string[], byValue: Map<string, Set<FilterGroup>> }>()
  /** entity key → the groups it is a member of */
  private readonly memberOf = new Map<string, Set<FilterGroup>>()
  /** groups reading their membership: they see every change */
  private readonly loading = new Set<FilterGroup>()
  /** the feed channel is watched */
  ready: Promise<void> = Promise.resolve()

  add (group: FilterGroup): void {
    this.groups.set(group.subscriptionId, group)
    this.loading.add(group)
  }

  /** The group's membership is read: from now on it sees only the changes that may concern it. */
  loadedFrom (group: FilterGroup, entities: readonly SnapshotEntity[], saw: Visibility): void {
    this.loading.delete(group)
    for (const { entityId, tenantId } of entities) {
      const key = entityKey(tenantId, entityId)
      group.members.add(key)
      this.joined(key, group)
    }
    const [first] = group.conditions
    let path = this.index.get(first.path)
    if (path === undefined) this.index.set(first.path, path = { parts: first.parts, byValue: new Map() })
    for (const value of first.values) {
      let groups = path.byValue.get(value)
      if (groups === undefined) path.byValue.set(value, groups = new Set())
      groups.add(group)
    }
    const pending = group.pending ?? []
    group.pending = null
    group.saw = saw
    for (const change of pending) group.apply(change, this)
  }

  /** Reads the group's members again: after a gap its membership may be out of date. */
  private reload (group: FilterGroup): void {
    if (group.pending !== null) return
    this.unindex(group)
    this.loading.add(group)
    const attempt = (): void => {
      // what waited so far was committed before this read starts: the read has it
      group.pending = []
      group.loaded = group.read(false, false).then(({ entities, visibility }) => {
        if (this.groups.get(group.subscriptionId) === group) this.loadedFrom(group, entities, visibility)
        return entities
      })
      group.loaded.catch(() => {
        setTimeout(() => { if (this.groups.get(group.subscriptionId) === group) attempt() }, RELOAD_RETRY_MS).unref()
      })
    }
    attempt()
  }

  remove (group: FilterGroup): void {
    this.groups.delete(group.subscriptionId)
    this.loading.delete(group)
    this.unindex(group)
  }

  /** Takes the group out of the index, and its members out of the membership index. */
  private unindex (group: FilterGroup): void {
    for (const key of group.members) this.left(key, group)
    group.members.clear()
    const [first] = group.conditions
    const path = this.index.get(first.path)
    for (const value of first.values) {
      const groups = path?.byValue.get(value)
      groups?.delete(group)
      if (groups?.size === 0) path?.byValue.delete(value)
    }
    if (path?.byValue.size === 0) this.index.delete(first.path)
  }

  joined (key: string, group: FilterGroup): void {
    let groups = this.memberOf.get(key)
    if (groups === undefined) this.memberOf.set(key, groups = new Set())
    groups.add(group)
  }

  left (key: string, group: FilterGroup): void {
    const groups = this.memberOf.get(key)
    groups?.delete(group)
    if (groups?.size === 0) this.memberOf.delete(key)
  }

  deliver (frame: string, meta?: FrameMeta): boolean {
    if (meta === undefined) {
      // a resync: every filter of the type may have missed a change, so its watchers refetch, and it reads its
      // members again (changes meanwhile wait, as when it was made)
      for (const group of this.groups.values()) {
        group.emit(frame, undefined)
        this.reload(group)
      }
      return true
    }
    const change = changeOf(frame, meta)
    if (change === null) return true
    const candidates = new Set(this.loading)
    for (const group of this.memberOf.get(change.key) ?? []) candidates.add(group)
    if (change.document !== undefined && change.document !== null) {
      // read directly: every path here is another (the cache is for the groups' conditions, which share paths)
      for (const { parts, byValue } of this.index.values()) {
        const value = scalarKey(valueAt(change.document, parts))
        for (const group of (value === undefined ? undefined : byValue.get(value)) ?? []) candidates.add(group)
      }
    }
    for (const group of candidates) group.apply(change, this)
    return true
  }
}

/** What the groups need of a feed frame; null for a frame that is not a notification. */
function changeOf (frame: string, meta: FrameMeta): TypeChange | null {
  let parsed: { type?: string, data?: { entityId?: string, tenantId?: string, changeType?: string, payload?: unknown } }
  try {
    parsed = JSON.parse(frame)
  } catch {
    return null
  }
  const data = parsed.data
  if (parsed.type !== 'notification' || data === undefined || typeof data.entityId !== 'string' || typeof data.changeType !== 'string') return null
  const document = data.changeType === 'deleted' ? null : 'payload' in data ? data.payload : undefined
  return { frame, changeType: data.changeType, txid: meta.txid, key: entityKey(data.tenantId, data.entityId), document, keys: new DocumentKeys(document) }
}
