/**
 * TanStack Query adapter: a minimal notification (or a resync) invalidates the entity's query; a full one (or a
 * delta, made whole by the client) sets its data, unless the cache already holds something newer. Duck-typed: no dependency on @tanstack/query-core.
 */
import { subscriptionKey, type ChangefeedClient, type EntityMap, type Notification } from './index.js'

export interface QueryClientLike {
  invalidateQueries(filters: { queryKey: readonly unknown[] }): unknown
  setQueryData(queryKey: readonly unknown[], updater: unknown): unknown
}

export interface QuerySyncOptions {
  /** the query key of an entity; default [entityType, entityId], and for a tenant's entity [entityType, entityId, tenantId] */
  queryKey?: (entityType: string, entityId: string, tenantId?: string) => readonly unknown[]
}

/** Keeps `queryClient` in step with every subscription of `client`. Returns the function that stops it. */
export function syncQueryClient (client: ChangefeedClient<EntityMap>, queryClient: QueryClientLike, options: QuerySyncOptions = {}): () => void {
  const keyOf = options.queryKey ?? ((entityType: string, entityId: string, tenantId?: string) =>
    tenantId === undefined ? [entityType, entityId] : [entityType, entityId, tenantId])
  const applied = new Map<string, string>()
  const stopNotifications = client.onNotification((n: Notification) => {
    const queryKey = keyOf(n.entityType, n.entityId, n.tenantId)
    // a delta type's notification reaches observers with the whole document, as a full one does
    if (n.payloadType !== 'full' && n.payloadType !== 'delta') {
      void queryClient.invalidateQueries({ queryKey })
      return
    }
    const id = subscriptionKey(n.entityType, n.entityId, n.tenantId)
    // ISO timestamps compare as strings; a notification older than what was applied is stale
    const last = applied.get(id)
    if (last !== undefined && n.timestamp < last) return
    applied.set(id, n.timestamp)
    queryClient.setQueryData(queryKey, n.changeType === 'deleted' ? null : n.payload)
  })
  const stopResyncs = client.onResync((entityType, entityId, _reason, tenantId) => {
    applied.delete(subscriptionKey(entityType, entityId, tenantId))
    void queryClient.invalidateQueries({ queryKey: keyOf(entityType, entityId, tenantId) })
  })
  return () => { stopNotifications(); stopResyncs() }
}
