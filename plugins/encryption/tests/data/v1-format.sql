PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE IF NOT EXISTS "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);
INSERT INTO _sqlite_migrations VALUES(1,'vibekit_telemetry_sqlite','m001_events_and_sessions','2026-12-01 07:51:36.219191+00:00');
CREATE TABLE IF NOT EXISTS "events" (
   "seq" INTEGER PRIMARY KEY,
   "id" TEXT NOT NULL,
   "session_id" TEXT,
   "event_type" TEXT NOT NULL,
   "category" TEXT NOT NULL,
   "action" TEXT,
   "label" TEXT,
   "value" REAL,
   "timestamp" INTEGER NOT NULL,
   "agent" TEXT,
   "mode" TEXT,
   "prompt" TEXT,
   "parent_session_id" TEXT,
   "stream_data" TEXT,
   "status" TEXT,
   "error_type" TEXT,
   "error_message" TEXT,
   "error_stack" TEXT,
   "metadata" TEXT NOT NULL DEFAULT '{}',
   "truncated" TEXT
);
INSERT INTO events VALUES(1,'01a23096741d00004028252e490b32ce','s-v1-one','start','claude','code',NULL,NULL,1796111496221,'claude','code','enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:xslxEGWAfJzZDGf5KpYIRsCe6KOE8ufWp6e7jEg/FIMN4JuuPx2xgghkMwxQXo9hg+4vDNmsQUoV3p4=',NULL,NULL,NULL,NULL,NULL,NULL,'{"model":"enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:IldOBDOSM09xWFMzBThZr1P8Zur2vWsXyDJNTtFut32GQA==","note":"enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:JdiAtPDI86zawYDc59aeySt8wSQh0LsuUspHMr+lW/iHlYhA6J1/9Q==","input_tokens":1200,"nested":["enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:WuvAL7VuMIwJ9mgdzo3NDT60zgh8tfxcwAxOSkd2qQ+9VmgBsmbQ"]}',NULL);
INSERT INTO events VALUES(2,'01a23096741d0001be3e659778ef8216','s-v1-one','stream','claude',NULL,NULL,NULL,1796111496221,NULL,NULL,NULL,NULL,'enc:v1:9985b2e4:01a23096741d0001be3e659778ef8216:HROfG/kTY9wzTolNR3WaBXhNayzZnJ5PF7BEFU5mhjSfD24z+BZYPtboFzb2iiDfjQ==',NULL,NULL,NULL,NULL,'{}',NULL);
INSERT INTO events VALUES(3,'01a23096741d0002bebb6df2ca15c175','s-v1-one','error','claude',NULL,NULL,NULL,1796111496221,NULL,NULL,NULL,NULL,NULL,NULL,'Error','enc:v1:9985b2e4:01a23096741d0002bebb6df2ca15c175:t8sWBO9qmKGd61InOi7jbw6UJVV0/daAxBTtETYh4Mm1S1vIA2J0L2wTKCS7psM9r12YhUY7',NULL,'{}',NULL);
INSERT INTO events VALUES(4,'01a23096741d0003975ae661033233d5','s-v1-one','end','claude',NULL,NULL,NULL,1796111496221,NULL,NULL,NULL,NULL,NULL,'failed',NULL,NULL,NULL,'{}',NULL);
INSERT INTO events VALUES(5,'01a23096741d00048459a31e7c03e04a','s-v1-two','start','codex','chat',NULL,NULL,1796111496221,'codex','chat','enc:v1:9985b2e4:01a23096741d00048459a31e7c03e04a:AElmudU2lCdZh69mAESjiwmyViLzrYDFsFxeyDbOVsIzol8N7Y3SNqendG/rZ0C1',NULL,NULL,NULL,NULL,NULL,NULL,'{}',NULL);
INSERT INTO events VALUES(6,'01a23096741d000500cec0378110ac8e','s-v1-two','error','codex',NULL,NULL,NULL,1796111496221,NULL,NULL,NULL,NULL,NULL,NULL,'Timeout',NULL,NULL,'{}',NULL);
INSERT INTO events VALUES(7,'01a23096741d0006e94528381526852a','s-v1-two','end','codex',NULL,NULL,NULL,1796111496221,NULL,NULL,NULL,NULL,NULL,'failed',NULL,NULL,NULL,'{}',NULL);
CREATE TABLE IF NOT EXISTS 'events_fts_data'(id INTEGER PRIMARY KEY, block BLOB);
INSERT INTO events_fts_data VALUES(1,X'');
INSERT INTO events_fts_data VALUES(10,X'00000000000000');
CREATE TABLE IF NOT EXISTS 'events_fts_idx'(segid, term, pgno, PRIMARY KEY(segid, term)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS 'events_fts_docsize'(id INTEGER PRIMARY KEY, sz BLOB);
CREATE TABLE IF NOT EXISTS 'events_fts_config'(k PRIMARY KEY, v) WITHOUT ROWID;
INSERT INTO events_fts_config VALUES('version',4);
CREATE TABLE IF NOT EXISTS "fts_state" (
   "id" INTEGER PRIMARY KEY,
   "indexed_seq" INTEGER NOT NULL
);
INSERT INTO fts_state VALUES(1,0);
CREATE TABLE IF NOT EXISTS "sessions" (
   "id" TEXT PRIMARY KEY,
   "agent" TEXT,
   "mode" TEXT,
   "prompt" TEXT,
   "status" TEXT NOT NULL,
   "parent_id" TEXT,
   "started_at" INTEGER,
   "ended_at" INTEGER,
   "first_event_at" INTEGER,
   "last_event_at" INTEGER,
   "first_stream_at" INTEGER,
   "event_count" INTEGER,
   "stream_count" INTEGER,
   "error_count" INTEGER,
   "metadata" TEXT,
   "input_tokens" INTEGER,
   "output_tokens" INTEGER,
   "cache_read_tokens" INTEGER,
   "cache_creation_tokens" INTEGER,
   "reasoning_tokens" INTEGER,
   "last_error" TEXT,
   "has_start" INTEGER
);
INSERT INTO sessions VALUES('s-v1-one','claude','code','enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:xslxEGWAfJzZDGf5KpYIRsCe6KOE8ufWp6e7jEg/FIMN4JuuPx2xgghkMwxQXo9hg+4vDNmsQUoV3p4=','failed',NULL,1796111496221,1796111496221,1796111496221,1796111496221,1796111496221,4,1,1,'{"model":"enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:IldOBDOSM09xWFMzBThZr1P8Zur2vWsXyDJNTtFut32GQA==","note":"enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:JdiAtPDI86zawYDc59aeySt8wSQh0LsuUspHMr+lW/iHlYhA6J1/9Q==","input_tokens":1200,"nested":["enc:v1:9985b2e4:01a23096741d00004028252e490b32ce:WuvAL7VuMIwJ9mgdzo3NDT60zgh8tfxcwAxOSkd2qQ+9VmgBsmbQ"]}',1200,0,0,0,0,'enc:v1:9985b2e4:01a23096741d0002bebb6df2ca15c175:t8sWBO9qmKGd61InOi7jbw6UJVV0/daAxBTtETYh4Mm1S1vIA2J0L2wTKCS7psM9r12YhUY7',1);
INSERT INTO sessions VALUES('s-v1-two','codex','chat','enc:v1:9985b2e4:01a23096741d00048459a31e7c03e04a:AElmudU2lCdZh69mAESjiwmyViLzrYDFsFxeyDbOVsIzol8N7Y3SNqendG/rZ0C1','failed',NULL,1796111496221,1796111496221,1796111496221,1796111496221,NULL,3,0,1,'{}',0,0,0,0,0,'Timeout',1);
PRAGMA writable_schema=ON;
INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table','events_fts','events_fts',0,'CREATE VIRTUAL TABLE events_fts USING fts5(prompt, stream_data, content=''events'', content_rowid=''seq'', detail=none)');
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");
CREATE UNIQUE INDEX "events_id"
    ON "events" ("id");
CREATE INDEX "events_session_time"
    ON "events" ("session_id", "timestamp");
CREATE INDEX "events_category_time"
    ON "events" ("category", "timestamp");
CREATE INDEX "events_type_time"
    ON "events" ("event_type", "timestamp");
CREATE INDEX "events_time"
    ON "events" ("timestamp");
CREATE INDEX "sessions_started"
    ON "sessions" ("started_at", "id");
CREATE INDEX "sessions_status_started"
    ON "sessions" ("status", "started_at", "id");
CREATE INDEX "sessions_agent_started"
    ON "sessions" ("agent", "started_at", "id");
CREATE INDEX "sessions_parent"
    ON "sessions" ("parent_id", "started_at");
CREATE TRIGGER events_fts_ad AFTER DELETE ON events WHEN (old.prompt IS NOT NULL OR old.stream_data IS NOT NULL) AND old.seq <= (SELECT indexed_seq FROM fts_state WHERE id = 1) BEGIN INSERT INTO events_fts (events_fts, rowid, prompt, stream_data) VALUES ('delete', old.seq, old.prompt, old.stream_data); END;
PRAGMA writable_schema=OFF;
COMMIT;
