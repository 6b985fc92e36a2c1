import test from 'ava';
import { FrequencySketch } from '../../storage/frequency-sketch.js';

test('a count is never below the true count (up to 15), and unseen keys mostly count 0', (t) => {
  const sketch = new FrequencySketch(10_000);
  for (let key = 0; key < 5_000; key++) for (let n = 0; n < key % 16; n++) sketch.increment(`k${key}`);
  for (let key = 0; key < 5_000; key++) t.true(sketch.frequency(`k${key}`) >= Math.min(15, key % 16), `k${key}`);
  let overcounted = 0;
  for (let key = 0; key < 5_000; key++) if (sketch.frequency(`other${key}`) > 0) overcounted++;
  t.true(overcounted < 250, `${overcounted} of 5,000 unseen keys count more than 0`);
});

test('counts age: after ten increments per expected key every count is halved', (t) => {
  const sketch = new FrequencySketch(1024);
  for (let n = 0; n < 12; n++) sketch.increment('hot');
  t.is(sketch.frequency('hot'), 12);
  // 10 × 1024 increments in all trigger one halving (of one other key: no collisions with 'hot').
  for (let n = 12; n < 10 * 1024; n++) sketch.increment('other');
  t.is(sketch.frequency('hot'), 6);
  t.is(sketch.frequency('other'), 7, 'saturated at 15, then halved');
});
