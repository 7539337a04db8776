module github.com/wsbridge/wsbridge/deploy/kit

go 1.26.0
