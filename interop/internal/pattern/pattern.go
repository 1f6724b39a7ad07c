// Package pattern generates and verifies the interop payload pattern: byte i
// of a stream's payload is byte(i % 251). 251 is prime, so the pattern never
// lines up with power-of-two frame, window or buffer sizes, and a lost,
// duplicated or reordered chunk shows up as a mismatch at a precise offset.
package pattern

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Period is the length of the repeating pattern.
const Period = 251

// ChunkSize is the largest slice Bytes hands out, and the size of the
// buffers used by Write and Verify.
const ChunkSize = 64 * 1024

// table holds the pattern from offset 0 for Period+ChunkSize bytes, so the
// pattern starting at any offset o is table[o%Period:] without copying.
var table = func() []byte {
	b := make([]byte, Period+ChunkSize)
	for i := range b {
		b[i] = byte(i % Period)
	}
	return b
}()

// Bytes returns n (at most ChunkSize) pattern bytes starting at payload
// offset off. The slice is shared and must not be modified.
func Bytes(off int64, n int) []byte {
	if n > ChunkSize {
		panic("pattern: chunk too large")
	}
	start := int(off % Period)
	return table[start : start+n]
}

// Write writes the pattern bytes for payload offsets [from, to) to w.
func Write(w io.Writer, from, to int64) error {
	for off := from; off < to; {
		n := int(min(int64(ChunkSize), to-off))
		if _, err := w.Write(Bytes(off, n)); err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
		off += int64(n)
	}
	return nil
}

// Verify reads r until EOF and checks that it yields exactly want pattern
// bytes. It returns the number of bytes read and an error describing the
// first deviation (wrong byte, too many bytes, early EOF, read error).
func Verify(r io.Reader, want int64) (int64, error) {
	buf := make([]byte, ChunkSize)
	var off int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if off+int64(n) > want {
				return off + int64(n), fmt.Errorf("got more than %d bytes", want)
			}
			if got := buf[:n]; !bytes.Equal(got, Bytes(off, n)) {
				i := mismatch(got, Bytes(off, n))
				return off, fmt.Errorf("pattern mismatch at offset %d: got %d, want %d",
					off+int64(i), got[i], byte((off+int64(i))%Period))
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			if off != want {
				return off, fmt.Errorf("EOF after %d bytes, want %d", off, want)
			}
			return off, nil
		}
		if err != nil {
			return off, fmt.Errorf("read after %d of %d bytes: %w", off, want, err)
		}
	}
}

// Count reads r until EOF, checking the pattern but not the length, and
// returns the number of bytes read. Used where the reader cannot know how much
// the peer will send (the close-first command).
func Count(r io.Reader) (int64, error) {
	buf := make([]byte, ChunkSize)
	var off int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if got := buf[:n]; !bytes.Equal(got, Bytes(off, n)) {
				i := mismatch(got, Bytes(off, n))
				return off, fmt.Errorf("pattern mismatch at offset %d", off+int64(i))
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil {
			return off, fmt.Errorf("read after %d bytes: %w", off, err)
		}
	}
}

func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
