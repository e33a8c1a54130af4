// tinyasr serve's page: microphone (getUserMedia + an AudioWorklet) or a file, streamed over the
// WebSocket protocol of docs/serve.md; partial text grows on one line, final results are listed with
// their times and the times of their words.
"use strict";

const $ = (id) => document.getElementById(id);
const socketUrl = new URL("ws", location.href);
socketUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";

let microphone = null; // {socket, media, context, node} while recording

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function seconds(t) {
  return t.toFixed(2);
}

function showFinal(event, source) {
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `[${seconds(event.start)} - ${seconds(event.end)}]`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = event.text || "(no speech)";
  const from = document.createElement("span");
  from.className = "source";
  from.textContent = source;
  const words = document.createElement("span");
  words.className = "words";
  words.textContent = event.words.map((w) => `${w.text} ${seconds(w.start)}-${seconds(w.end)}`).join("  ");
  item.append(time, text, from, words);
  $("finals").append(item);
  $("partial").textContent = "";
}

// One session: sends `start` when open, calls onReady(readyEvent), shows events, reports the close.
function openSession(start, source, onReady, onClosed) {
  const socket = new WebSocket(socketUrl);
  socket.binaryType = "arraybuffer";
  let failed = false;
  socket.onopen = () => socket.send(JSON.stringify(start));
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "ready") {
      $("model").textContent = `model ${event.model} (${event.model_sample_rate} Hz)`;
      onReady(event);
    } else if (event.type === "partial") {
      $("partial").textContent = event.text;
    } else if (event.type === "final") {
      showFinal(event, source);
    } else if (event.type === "done") {
      setStatus(`done: ${seconds(event.duration)} s of audio`);
    } else if (event.type === "error") {
      failed = true;
      setStatus(`server: ${event.message}`, true);
    }
  };
  socket.onclose = (close) => {
    if (!failed && close.code !== 1000) {
      setStatus(`connection closed (${close.code}${close.reason ? " " + close.reason : ""})`, true);
    }
    onClosed();
  };
  return socket;
}

async function startMicrophone() {
  $("start").disabled = true;
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext();
    await context.audioWorklet.addModule("capture-worklet.js");
    const node = new AudioWorkletNode(context, "pcm-capture");
    const mute = context.createGain(); // the graph must reach the destination to be rendered; silently
    mute.gain.value = 0;
    context.createMediaStreamSource(media).connect(node);
    node.connect(mute).connect(context.destination);
    const pending = []; // audio captured before the server is ready
    let ready = false;
    const socket = openSession({ type: "start", sample_rate: context.sampleRate }, "microphone", () => {
      ready = true;
      pending.splice(0).forEach((block) => socket.send(block));
      $("stop").disabled = false;
      setStatus("listening: speak now");
    }, stopCapture);
    node.port.onmessage = (message) => {
      if (message.data === "flushed") {
        socket.send(JSON.stringify({ type: "end" }));
      } else if (ready && socket.readyState === WebSocket.OPEN) {
        socket.send(message.data);
      } else if (!ready) {
        pending.push(message.data);
      }
    };
    microphone = { socket, media, context, node };
    setStatus("connecting...");
  } catch (error) {
    setStatus(`microphone: ${error.message}`, true);
    stopCapture();
  }
}

// Stop: the worklet sends its last partial block, then "flushed", and the page sends `end`.
function stopMicrophone() {
  $("stop").disabled = true;
  setStatus("finishing...");
  microphone.node.port.postMessage("flush");
}

function stopCapture() {
  if (microphone) {
    microphone.media.getTracks().forEach((track) => track.stop());
    microphone.context.close();
    microphone = null;
  }
  $("start").disabled = false;
  $("stop").disabled = true;
}

async function sendFile(file) {
  const data = await file.arrayBuffer();
  setStatus(`sending ${file.name}...`);
  const socket = openSession({ type: "start", mode: "file" }, file.name, (ready) => {
    if (data.byteLength > ready.limits.max_file_bytes) {
      setStatus(`${file.name} is larger than the server's limit of ${ready.limits.max_file_bytes} bytes`, true);
      socket.close();
      return;
    }
    const step = Math.min(ready.limits.max_message_bytes, 65536);
    for (let offset = 0; offset < data.byteLength; offset += step) {
      socket.send(data.slice(offset, offset + step));
    }
    socket.send(JSON.stringify({ type: "end" }));
    setStatus(`transcribing ${file.name}...`);
  }, () => {});
}

$("start").addEventListener("click", startMicrophone);
$("stop").addEventListener("click", stopMicrophone);
$("file").addEventListener("change", (event) => {
  if (event.target.files.length) sendFile(event.target.files[0]);
});
