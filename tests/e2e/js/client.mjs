// Drives a running vectord with Qdrant's official JavaScript client, unchanged.
//   node client.mjs http://127.0.0.1:6333
import { QdrantClient } from "@qdrant/js-client-rest";
import assert from "node:assert/strict";

const url = process.argv[2];
const client = new QdrantClient({ url, checkCompatibility: false });
let passed = 0, failed = 0;

async function step(name, fn) {
    try {
        await fn();
        passed++;
        console.log(`ok - ${name}`);
    } catch (e) {
        failed++;
        console.log(`FAIL - ${name}: ${e && e.stack ? e.stack : e}`);
    }
}

const name = "js_client";
const uuid = "5c56c793-69f3-4fbf-87e6-c4bf54c28c26";
await step("create collection", async () => {
    const r = await client.createCollection(name, { vectors: { size: 4, distance: "Cosine" } });
    assert.equal(r, true);
    assert.equal((await client.collectionExists(name)).exists, true);
    const list = await client.getCollections();
    assert.ok(list.collections.some((c) => c.name === name));
});
await step("upsert", async () => {
    const r = await client.upsert(name, {
        wait: true,
        points: [
            { id: 1, vector: [0.05, 0.61, 0.76, 0.74], payload: { city: "Berlin" } },
            { id: 2, vector: [0.19, 0.81, 0.75, 0.11], payload: { city: "London" } },
            { id: uuid, vector: [0.36, 0.55, 0.47, 0.94], payload: { city: "Moscow" } },
        ],
    });
    assert.equal(r.status, "completed");
    const b = await client.upsert(name, { wait: true, batch: { ids: [4], vectors: [[0.18, 0.01, 0.85, 0.8]], payloads: [{ city: "New York" }] } });
    assert.equal(b.status, "completed");
});
await step("collection info", async () => {
    const info = await client.getCollection(name);
    assert.equal(info.points_count, 4);
    assert.equal(info.config.params.vectors.size, 4);
    assert.equal(info.config.params.vectors.distance, "Cosine");
});
await step("retrieve", async () => {
    const r = await client.retrieve(name, { ids: [1, uuid], with_payload: true, with_vector: true });
    assert.equal(r.length, 2);
    const byId = Object.fromEntries(r.map((p) => [p.id, p]));
    assert.equal(byId[1].payload.city, "Berlin");
    assert.equal(byId[uuid].payload.city, "Moscow");
    assert.equal(byId[1].vector.length, 4);
});
await step("search", async () => {
    const r = await client.search(name, { vector: [0.2, 0.1, 0.9, 0.7], limit: 3, with_payload: true });
    assert.equal(r.length, 3);
    assert.equal(r[0].id, 4);
    assert.ok(r[0].score >= r[1].score && r[1].score >= r[2].score);
    const f = await client.search(name, {
        vector: [0.2, 0.1, 0.9, 0.7], limit: 3,
        filter: { must: [{ key: "city", match: { value: "London" } }] },
    });
    assert.deepEqual(f.map((p) => p.id), [2]);
    const batch = await client.searchBatch(name, { searches: [{ vector: [0.2, 0.1, 0.9, 0.7], limit: 1 }, { vector: [0.19, 0.81, 0.75, 0.11], limit: 1 }] });
    assert.deepEqual(batch.map((x) => x[0].id), [4, 2]);
});
await step("query", async () => {
    const r = await client.query(name, { query: [0.2, 0.1, 0.9, 0.7], limit: 2 });
    assert.equal(r.points.length, 2);
    assert.equal(r.points[0].id, 4);
    const byId = await client.query(name, { query: 2, limit: 1 });
    assert.equal(byId.points.length, 1);
    assert.notEqual(byId.points[0].id, 2);
});
await step("scroll and count", async () => {
    const s = await client.scroll(name, { limit: 2 });
    assert.deepEqual(s.points.map((p) => p.id), [1, 2]);
    assert.equal(s.next_page_offset, 4);
    assert.equal((await client.count(name, { exact: true })).count, 4);
});
await step("payload edits", async () => {
    await client.setPayload(name, { payload: { capital: true }, points: [1], wait: true });
    const r = await client.retrieve(name, { ids: [1] });
    assert.deepEqual(r[0].payload, { city: "Berlin", capital: true });
});
await step("delete points", async () => {
    const r = await client.delete(name, { wait: true, points: [1] });
    assert.equal(r.status, "completed");
    assert.equal((await client.count(name)).count, 3);
});
await step("errors surface as exceptions", async () => {
    await assert.rejects(client.getCollection("no_such_collection"));
    await assert.rejects(client.upsert(name, { wait: true, points: [{ id: 9, vector: [1, 2, 3] }] }));
});
await step("delete collection", async () => {
    assert.equal(await client.deleteCollection(name), true);
    assert.equal((await client.collectionExists(name)).exists, false);
});
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
