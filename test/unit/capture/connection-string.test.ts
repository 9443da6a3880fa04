/**
 * The connection strings Marten keeps for its tenants' databases (Npgsql's keywords, or URLs) as the URL `pg` takes.
 */
import t from 'tap'
import { connectionUrl } from '../../../lib/capture/connection-string.js'
import { target } from '../../../lib/capture/databases.js'

t.test('Npgsql\'s keywords: any case, spaces, synonyms, quoted values; the password encoded', async (t) => {
  t.equal(connectionUrl('Host=db.example;Port=5433;Database=red;Username=app;Password=p@ss;w:rd'), null, 'a ; inside an unquoted value ends it')
  t.equal(connectionUrl('Host=db.example;Port=5433;Database=red;Username=app;Password="p@ss;w:rd"'), 'postgres://app:p%40ss%3Bw%3Ard@db.example:5433/red')
  t.equal(connectionUrl('server = db ; DATABASE = blue ; User ID = app ; PWD = \'it\'\'s\' ; Pooling=true; SSL Mode=VerifyFull'),
    'postgres://app:it\'s@db/blue?sslmode=verify-full')
  t.equal(connectionUrl('Host=/var/run/postgresql;Port=5432;Database=green'), 'postgres:///green?host=%2Fvar%2Frun%2Fpostgresql&port=5432', 'a Unix socket')
  t.equal(connectionUrl('Host=a,b;Database=x;Application Name=marten'), 'postgres:///x?host=a%2Cb&application_name=marten', 'several hosts')
})

t.test('a URL as it is; anything else refused', async (t) => {
  t.equal(connectionUrl('postgresql://u:p@h/d'), 'postgresql://u:p@h/d')
  for (const text of ['', 'Pooling=true', 'Host=h', 'Database=d', 'no pairs at all', 'Host=h;Database=']) t.equal(connectionUrl(text), null, JSON.stringify(text))
})

t.test('what is logged of one names no password', async (t) => {
  const url = connectionUrl('Host=db;Database=red;Username=app;Password=s3cret') ?? ''
  t.same(target(url), { server: 'db:5432', database: 'red', role: 'app' })
  t.notMatch(JSON.stringify(target(url)), /s3cret/)
})
