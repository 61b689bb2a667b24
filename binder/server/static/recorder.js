// Microphone recording for the audio field: samples are collected in the page and encoded as a
// 16-bit PCM WAV file, which is put into the file input as if the user had chosen it, so the
// server only ever decodes WAV.
let rec = null;

async function toggleRecording() {
  const button = document.getElementById('record');
  if (rec) { rec.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  node.onaudioprocess = e => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  src.connect(node);
  node.connect(ctx.destination);
  button.textContent = 'Stop recording';
  rec = {stop: () => {
    node.disconnect(); src.disconnect(); stream.getTracks().forEach(t => t.stop());
    const blob = wavBlob(chunks, ctx.sampleRate);
    ctx.close(); rec = null;
    const file = new File([blob], 'recording.wav', {type: 'audio/wav'});
    const dt = new DataTransfer();
    dt.items.add(file);
    document.getElementById('audio').files = dt.files;
    button.textContent = 'Record again';
  }};
}

function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf);
  const w = (o, s) => [...s].forEach((ch, i) => v.setUint8(o + i, ch.charCodeAt(0)));
  w(0, 'RIFF'); v.setUint32(4, 36 + 2 * n, true); w(8, 'WAVEfmt '); v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true);
  v.setUint16(32, 2, true); v.setUint16(34, 16, true); w(36, 'data'); v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const x of c) { v.setInt16(o, Math.max(-1, Math.min(1, x)) * 32767, true); o += 2; }
  return new Blob([buf], {type: 'audio/wav'});
}

document.addEventListener('DOMContentLoaded', () => {
  const button = document.getElementById('record');
  if (button) button.addEventListener('click', toggleRecording);
});
