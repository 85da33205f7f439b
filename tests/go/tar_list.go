// Lists a tar the way Go's archive/tar (the reader umoci unpacks with) reads it, for
// tests/tar_corpus.rs: one JSON object on stdout, {"entries": [...]} or {"error": "..."}.
// Byte strings are base64 (JSON's []byte), since names and xattr values need not be UTF-8.
package main

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"strings"
)

type entry struct {
	Name     []byte            `json:"name"`
	Typeflag byte              `json:"typeflag"`
	Size     int64             `json:"size"`
	Link     []byte            `json:"link"`
	Mode     int64             `json:"mode"`
	Uid      int               `json:"uid"`
	Gid      int               `json:"gid"`
	Mtime    int64             `json:"mtime"`
	Nsec     int               `json:"nsec"`
	Devmajor int64             `json:"devmajor"`
	Devminor int64             `json:"devminor"`
	Xattrs   map[string][]byte `json:"xattrs"`
	// Sparse files: an old GNU sparse header or GNU's PAX sparse records.
	Sparse bool `json:"sparse"`
}

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	out := json.NewEncoder(os.Stdout)
	r := tar.NewReader(f)
	entries := []entry{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err == nil {
			// Reading the data is part of reading the tar: a short file is an error.
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			out.Encode(map[string]string{"error": err.Error()})
			return
		}
		e := entry{
			Name: []byte(h.Name), Typeflag: h.Typeflag, Size: h.Size, Link: []byte(h.Linkname),
			Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, Mtime: h.ModTime.Unix(),
			Nsec: h.ModTime.Nanosecond(), Devmajor: h.Devmajor, Devminor: h.Devminor,
			Xattrs: map[string][]byte{}, Sparse: h.Typeflag == tar.TypeGNUSparse,
		}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				e.Xattrs[k[len("SCHILY.xattr."):]] = []byte(v)
			}
			if strings.HasPrefix(k, "GNU.sparse.") {
				e.Sparse = true
			}
		}
		entries = append(entries, e)
	}
	out.Encode(map[string][]entry{"entries": entries})
}
