// Package wire holds our own copies of the types bahamut and elemental put
// on the wire, with the same struct tags, and codec handles set as
// elemental sets them. bahamut and elemental are not packaged by Debian, so
// the interop programs cannot import them; what matters for the wire is the
// tags and the handle settings, which are reproduced here.
package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	"github.com/ugorji/go/codec"
)

// The two media types of elemental's EncodingType.
const (
	JSON    = "application/json"
	MSGPACK = "application/msgpack"
)

// Event is elemental's Event: in MessagePack the entity is a bin (RawData),
// in JSON a raw JSON value (JSONData).
type Event struct {
	RawData   []byte          `msgpack:"entity" json:"-"`
	JSONData  json.RawMessage `msgpack:"-" json:"entity"`
	Identity  string          `msgpack:"identity" json:"identity"`
	Type      string          `msgpack:"type" json:"type"`
	Timestamp time.Time       `msgpack:"timestamp" json:"timestamp"`
	Encoding  string          `msgpack:"encoding" json:"encoding"`
}

// Entity returns the encoded entity, as elemental's Event.Entity does.
func (e *Event) Entity() []byte {
	if e.Encoding == MSGPACK {
		return e.RawData
	}
	return []byte(e.JSONData)
}

// PushConfig is elemental's PushConfig (url.Values is map[string][]string).
type PushConfig struct {
	Identities      map[string][]string `msgpack:"identities" json:"identities"`
	IdentityFilters map[string]string   `msgpack:"filters"    json:"filters"`
	Params          map[string][]string `msgpack:"parameters" json:"parameters"`
}

// Error is elemental's Error, the entity of an error event.
type Error struct {
	Code        int         `msgpack:"code" json:"code,omitempty"`
	Description string      `msgpack:"description" json:"description"`
	Subject     string      `msgpack:"subject" json:"subject"`
	Title       string      `msgpack:"title" json:"title"`
	Data        interface{} `msgpack:"data" json:"data,omitempty"`
	Trace       string      `msgpack:"trace" json:"trace,omitempty"`
}

// Publication is bahamut's Publication, the envelope on the pub/sub topic
// (TrackingData is opentracing's TextMapCarrier, a map[string]string).
type Publication struct {
	Data         []byte            `msgpack:"data,omitempty" json:"data,omitempty"`
	Topic        string            `msgpack:"topic,omitempty" json:"topic,omitempty"`
	Partition    int32             `msgpack:"partition,omitempty" json:"partition,omitempty"`
	TrackingName string            `msgpack:"trackingName,omitempty" json:"trackingName,omitempty"`
	TrackingData map[string]string `msgpack:"trackingData,omitempty" json:"trackingData,omitempty"`
	Encoding     string            `msgpack:"encoding,omitempty" json:"encoding,omitempty"`
	ResponseMode int               `msgpack:"responseMode,omitempty" json:"responseMode,omitempty"`
}

// Task is an application model as elemental's generator writes one: a
// struct with msgpack and json tags, so ints are Go ints and times
// time.Time (not what a map[string]any would give).
type Task struct {
	ID          string    `msgpack:"ID" json:"ID"`
	Name        string    `msgpack:"name" json:"name"`
	Description string    `msgpack:"description" json:"description"`
	Priority    int       `msgpack:"priority" json:"priority"`
	Ratio       float64   `msgpack:"ratio" json:"ratio"`
	Archived    bool      `msgpack:"archived" json:"archived"`
	ParentID    *string   `msgpack:"parentID" json:"parentID"`
	Tags        []string  `msgpack:"tags" json:"tags"`
	CreateTime  time.Time `msgpack:"createTime" json:"createTime"`
}

// The handles, set as elemental's encoding.go init() sets them: canonical
// (sorted map keys and struct fields), the new MessagePack spec (str8, bin,
// the timestamp extension), struct tags read from "msgpack", maps decoded as
// map[string]interface{}. The JSON handle reads the "json" tags.
var (
	msgpackHandle = &codec.MsgpackHandle{}
	jsonHandle    = &codec.JsonHandle{}
)

func init() {
	// elemental makes every time UTC; so do we, so that JSON times print alike.
	time.Local = time.UTC
	mapType := reflect.TypeOf(map[string]interface{}(nil))

	jsonHandle.Canonical = true
	jsonHandle.MapType = mapType
	jsonHandle.MapValueReset = true

	msgpackHandle.WriteExt = true
	msgpackHandle.Canonical = true
	msgpackHandle.TypeInfos = codec.NewTypeInfos([]string{"msgpack"})
	msgpackHandle.MapType = mapType
	msgpackHandle.MapValueReset = true
}

func handle(encoding string) codec.Handle {
	if encoding == MSGPACK {
		return msgpackHandle
	}
	return jsonHandle
}

// Encode encodes obj as elemental.Encode does.
func Encode(encoding string, obj interface{}) ([]byte, error) {
	var buf bytes.Buffer
	if err := codec.NewEncoder(&buf, handle(encoding)).Encode(obj); err != nil {
		return nil, fmt.Errorf("unable to encode %s: %w", encoding, err)
	}
	return buf.Bytes(), nil
}

// Decode decodes data into dst as elemental.Decode does (unknown keys are
// swallowed: ErrorIfNoField stays false).
func Decode(encoding string, data []byte, dst interface{}) error {
	if err := codec.NewDecoderBytes(data, handle(encoding)).Decode(dst); err != nil {
		return fmt.Errorf("unable to decode %s: %w", encoding, err)
	}
	return nil
}

// MediaType maps the flag values json / msgpack to elemental's media types.
func MediaType(flag string) (string, error) {
	switch flag {
	case "json":
		return JSON, nil
	case "msgpack":
		return MSGPACK, nil
	}
	return "", fmt.Errorf("unknown encoding %q (json or msgpack)", flag)
}

// PrintLine writes v as one JSON line on stdout (encoding/json: the test
// reads these lines, and they must not depend on the codec under test).
func PrintLine(v interface{}) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(line))
}
