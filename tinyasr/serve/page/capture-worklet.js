// Audio thread of the page: gathers the microphone's 128-sample render quanta into ~100 ms blocks of
// 16-bit PCM (first channel) and posts them to the page, which sends them to the server as they are;
// the server resamples from the AudioContext's rate.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 10);
    this.block = new Int16Array(this.size);
    this.filled = 0;
    this.port.onmessage = () => { // "flush": the page is stopping
      this.port.postMessage(this.block.slice(0, this.filled).buffer);
      this.filled = 0;
      this.port.postMessage("flushed");
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const x = Math.max(-1, Math.min(1, channel[i]));
        this.block[this.filled++] = x < 0 ? x * 32768 : x * 32767;
        if (this.filled === this.size) {
          this.port.postMessage(this.block.buffer, [this.block.buffer]); // transferred: the block is detached
          this.block = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
