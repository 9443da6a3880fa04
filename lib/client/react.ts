/**
 * React bindings on useSyncExternalStore: one client (one socket) per app through a provider; hooks that subscribe
 * while mounted. StrictMode's mount/unmount/mount sends one subscribe and no unsubscribe (the client releases a
 * subscription on the next tick only). The stores the hooks read are made here of the client's handles; a store
 * reads the state before it subscribes (`peek`), so a component that mounts on an entity others hold already renders
 * its state at once.
 */
import { createContext, createElement, useContext, useEffect, useMemo, useRef, useSyncExternalStore, type ReactNode } from 'react'
import type {
  ChangefeedClient, ConnectionState, EntityMap, EntitySnapshot, LiveQueryOptions, LiveQueryState, Notification, PresenceEvents, PresenceHandle,
  PresenceState, SubscribeOptions, Where
} from './index.js'

/** The store React's useSyncExternalStore reads. */
export interface ExternalStore<S> {
  subscribe: (onChange: () => void) => () => void
  getSnapshot: () => S
}

function useStore<S> (store: ExternalStore<S>): S {
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot)
}

/** One entity's state while subscribed to (`counted`: with watcher counts; `snapshot`: from the entity's state). */
function useEntityStore<M extends EntityMap, K extends keyof M & string> (client: ChangefeedClient<M>, entityType: K, entityId: string, options: SubscribeOptions): EntitySnapshot<M[K]> {
  const { tenantId, snapshot, counted } = options
  const store = useMemo((): ExternalStore<EntitySnapshot<M[K]>> => ({
    subscribe: (onChange) => client.subscribe(entityType, entityId, { onChange }, { tenantId, snapshot, counted }),
    getSnapshot: () => client.peek(entityType, entityId, { tenantId })
  }), [client, entityType, entityId, tenantId, snapshot, counted])
  return useStore(store)
}

/** A client of any entity map: `ChangefeedClient<Entities>` is one (the entity map only narrows what it is asked). */
const ClientContext = createContext<ChangefeedClient<EntityMap> | null>(null)

export function ChangefeedProvider ({ client, children }: { client: ChangefeedClient<EntityMap>, children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: client }, children)
}

/** The provider's client, typed by the caller's entity map (the provider cannot know it: the caller states it). */
export function useChangefeedClient<M extends EntityMap = EntityMap> (): ChangefeedClient<M> {
  const client = useContext(ClientContext)
  if (client === null) throw new Error('useChangefeedClient: wrap the app in <ChangefeedProvider client={…}>')
  return client as ChangefeedClient<M>
}

/**
 * Watches an entity while the component is mounted and re-renders on each change. `onNotification` (optional)
 * runs for every notification, e.g. to refetch on a minimal one; `snapshot.revision` changes on every notification
 * and resync, so it also works as an effect dependency. `snapshot: true`: `payload` holds the entity's document
 * from the subscription's start (null: none).
 */
export function useEntitySubscription<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, onNotification?: (notification: Notification<M[K]>) => void, options: { tenantId?: string, snapshot?: boolean } = {}
): EntitySnapshot<M[K]> {
  const snapshot = useEntityStore(useChangefeedClient<M>(), entityType, entityId, options)
  const handler = useRef(onNotification)
  handler.current = onNotification
  const seen = useRef<Notification<M[K]> | undefined>(undefined)
  useEffect(() => {
    const notification = snapshot.notification
    if (notification !== undefined && notification !== seen.current) {
      seen.current = notification
      handler.current?.(notification)
    }
  }, [snapshot.notification])
  return snapshot
}

/**
 * The document of an entity: its state when the subscription began (a snapshot), then each change, `full` or made
 * whole from a `delta`. Undefined until the server answers (and for minimal types); null when there is none.
 */
export function useEntity<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, options: { tenantId?: string } = {}
): M[K] | null | undefined {
  return useEntitySubscription<M, K>(entityType, entityId, undefined, { tenantId: options.tenantId, snapshot: true }).payload
}

/**
 * Many entities of one type, each's state by id (`status`, and `payload`, the document from the snapshot on): one
 * request for all of them. Re-renders when any of them changes.
 */
export function useEntities<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityIds: readonly string[], options: { tenantId?: string } = {}
): ReadonlyMap<string, EntitySnapshot<M[K]>> {
  const client = useChangefeedClient<M>()
  const { tenantId } = options
  // ids hold no control characters: joined with one, they name the list whatever array holds them
  const ids = entityIds.join('\u0000')
  const store = useMemo((): ExternalStore<ReadonlyMap<string, EntitySnapshot<M[K]>>> => {
    const list = ids === '' ? [] : [...new Set(ids.split('\u0000'))]
    let parts: Array<EntitySnapshot<M[K]>> = []
    let snapshots: ReadonlyMap<string, EntitySnapshot<M[K]>> = new Map()
    return {
      subscribe: (onChange) => client.subscribeMany(entityType, list, { onChange }, { tenantId, snapshot: true }),
      // a new Map only when one of them changed: React compares snapshots by identity
      getSnapshot: () => {
        const now = list.map((id) => client.peek(entityType, id, { tenantId }))
        if (now.length !== parts.length || now.some((s, i) => s !== parts[i])) {
          parts = now
          snapshots = new Map(list.map((id, i) => [id, now[i]]))
        }
        return snapshots
      }
    }
  }, [client, entityType, ids, tenantId])
  return useStore(store)
}

/**
 * A live query: the entities of a type whose document matches `where`, by id (`entities`), and `status` (pending
 * until the first snapshot, then ready; error when refused). Re-renders on every change of the matches.
 */
export function useLiveQuery<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, where: Where, options: LiveQueryOptions = {}
): LiveQueryState<M[K]> {
  const client = useChangefeedClient<M>()
  const { tenantId, snapshot } = options
  // a new object each render with the same conditions is the same query
  const conditions = JSON.stringify(where)
  const store = useMemo((): ExternalStore<LiveQueryState<M[K]>> => {
    const query = JSON.parse(conditions) as Where
    return {
      subscribe: (onChange) => {
        const handle = client.subscribeWhere(entityType, query, { tenantId, snapshot })
        handle.onChange(onChange)
        return handle
      },
      getSnapshot: () => client.peekWhere(entityType, query, { tenantId })
    }
  }, [client, entityType, conditions, tenantId, snapshot])
  return useStore(store)
}

/** "N watching": the number of sockets watching the entity across the cluster (undefined until known). */
export function useWatcherCount (entityType: string, entityId: string, options: { tenantId?: string } = {}): number | undefined {
  return useEntityStore(useChangefeedClient(), entityType, entityId, { tenantId: options.tenantId, counted: true }).watchers
}

/**
 * Presence on an entity while mounted: who is on it (`members`, `count`), re-rendered on each change. With `info`
 * this client joins as a member, and a new info (compared as JSON) is set in place, no leave and join; without, it
 * watches. `signal(data)` sends a signal to the other sockets on the entity.
 */
export function usePresence<I = unknown> (entityType: string, entityId: string, info?: I, options: { tenantId?: string } = {}): PresenceState<I> & { signal: (data: unknown) => void } {
  const client = useChangefeedClient()
  const { tenantId } = options
  const json = JSON.stringify(info)
  const latest = useRef(info)
  latest.current = info
  const handle = useRef<PresenceHandle<I> | null>(null)
  const store = useMemo((): ExternalStore<PresenceState<I>> => {
    let pending: PresenceState<I> | undefined
    return {
      subscribe: (onChange) => {
        const h = handle.current = client.presence<I>(entityType, entityId, { info: latest.current, tenantId })
        const stop = h.onChange(onChange)
        onChange()
        return () => { stop(); h.close(); if (handle.current === h) handle.current = null }
      },
      getSnapshot: () => handle.current?.getSnapshot() ?? (pending ??= { status: 'pending', members: new Map(), count: 0, truncated: false })
    }
  }, [client, entityType, entityId, tenantId])
  const state = useStore(store)
  // the info it joined with is sent with the subscribe: only a later one is set
  const sent = useRef(json)
  useEffect(() => {
    if (sent.current === json || latest.current === undefined) return
    sent.current = json
    handle.current?.set(latest.current)
  }, [json])
  return useMemo(() => ({ ...state, signal: (data: unknown) => handle.current?.signal(data) }), [state])
}

/** Calls `onSignal` for each signal of another socket on the entity while mounted (it watches the entity's presence). */
export function useSignals (entityType: string, entityId: string, onSignal: NonNullable<PresenceEvents['onSignal']>, options: { tenantId?: string } = {}): void {
  const client = useChangefeedClient()
  const handler = useRef(onSignal)
  handler.current = onSignal
  const { tenantId } = options
  useEffect(() => {
    const h = client.presence(entityType, entityId, { tenantId })
    h.on({ onSignal: (signal) => handler.current(signal) })
    return () => h.close()
  }, [client, entityType, entityId, tenantId])
}

/** The connection state: idle, connecting, open, reconnecting, unauthorized, closed. */
export function useConnectionState (): ConnectionState {
  const client = useChangefeedClient()
  return useSyncExternalStore((onChange) => client.onState(onChange), () => client.state, () => client.state)
}
