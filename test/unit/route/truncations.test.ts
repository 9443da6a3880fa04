/** Which tenants a truncated list partition held: the values of its bound, as PostgreSQL prints it. */
import t from 'tap'
import { listBoundValues } from '../../../lib/route/truncations.js'

t.test('listBoundValues: the values of a list partition, quotes undone; none for a default partition', async (t) => {
  t.same(listBoundValues("FOR VALUES IN ('Red')"), ['Red'])
  t.same(listBoundValues("FOR VALUES IN ('red', 'O''Neil', 'a,b')"), ['red', "O'Neil", 'a,b'])
  t.equal(listBoundValues('DEFAULT'), null)
  t.same(listBoundValues('FOR VALUES IN (true)'), [], 'not a tenant\'s')
})
